"""The calculator WSGI application, served as ``server.calculator:app``.

Modules: ``arithmetic`` (exact Decimal operations and the size bound), ``calc_request`` (the
POST /calc JSON body), ``request_body`` (media type and bounded body reading), ``problems``
(RFC 9457 documents), ``openapi`` (the API description) and ``app`` (routing).
"""

from .app import app

__all__ = ["app"]
