"""An ordinary Flask application, served unchanged by our server in the tests."""

import os

from flask import Flask, jsonify, request, send_file

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name: str):
    return f"Hello, {name}!"


@app.post("/json")
def echo_json():
    data = request.get_json()
    return jsonify(received=data, length=request.content_length, remote=request.remote_addr)


@app.get("/stream")
def stream():
    def generate():
        for i in range(3):
            yield f"line {i}\n"

    return app.response_class(generate(), mimetype="text/plain")


@app.get("/cookie")
def cookie():
    response = jsonify(seen=request.cookies.get("flavour"))
    response.set_cookie("flavour", "oat")
    return response


@app.get("/download")
def download():
    """Flask's own file sending; it hands the open file to wsgi.file_wrapper."""
    return send_file(os.environ["SERVED_FILE"], mimetype="application/octet-stream")
