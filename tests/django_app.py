"""A minimal single-file Django project, served unchanged by our server in the tests."""

import json
import os

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-only-not-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        INSTALLED_APPS=[],
        USE_TZ=True,
    )

from django.core.wsgi import get_wsgi_application
from django.http import FileResponse, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


def hello(request, name):
    return HttpResponse(f"Hello from Django, {name}!", content_type="text/plain")


@csrf_exempt
def echo(request):
    return JsonResponse({"method": request.method, "body": json.loads(request.body or b"null"),
                         "query": request.GET.dict(), "secure": request.is_secure(),
                         "host": request.get_host()})


def stream(request):
    return StreamingHttpResponse((f"chunk {i}\n" for i in range(3)), content_type="text/plain")


def download(request):
    """Django's own file sending; its WSGI handler passes the file to wsgi.file_wrapper."""
    return FileResponse(open(os.environ["SERVED_FILE"], "rb"), content_type="application/octet-stream")


urlpatterns = [
    path("hello/<str:name>", hello),
    path("echo", echo),
    path("stream", stream),
    path("download", download),
]

application = get_wsgi_application()
