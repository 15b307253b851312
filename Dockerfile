# The calculator server: the standard library only, so the image is a Python
# base plus the server/ package, nothing installed.
#
#   docker build -t calc-server .
#   docker build --build-arg PYTHON_IMAGE=local/python:3.13-trixie -t calc-server .
#
# PYTHON_IMAGE is any image with python3 >= 3.11 on the PATH: the official one,
# or the stand-in scripts/docker-setup builds from Debian packages where no
# registry is reachable.
ARG PYTHON_IMAGE=python:3.13-slim
FROM ${PYTHON_IMAGE}

# Settings come from CALC_* variables (see server/config.py); these are the
# container defaults. Every interface, port 8000. The X-Forwarded-For of peers
# in private address ranges is trusted: on the compose network that is nginx,
# whose subnet Docker picks at start-up. The server is not published there,
# so no other peer reaches it. Prometheus metrics on port 9100 (its own listener,
# never the application's port); CALC_METRICS_BIND= (empty) turns them off.
ENV CALC_HOST=0.0.0.0 \
    CALC_PORT=8000 \
    CALC_FORWARDED_ALLOW_IPS=127.0.0.1,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16 \
    CALC_METRICS_BIND=0.0.0.0:9100 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app

WORKDIR /app
COPY server/ /app/server/
# Byte-code compiled now, since the root filesystem is read-only at run time;
# files readable by the unprivileged user whatever the checkout's umask was.
RUN python3 -m compileall -q /app/server && chmod -R a+rX,go-w /app

# No user of its own is needed: a fixed unprivileged uid/gid, no login, no home.
USER 10001:10001
EXPOSE 8000 9100

# SIGTERM: the server stops accepting, finishes in-flight requests within
# CALC_GRACEFUL_TIMEOUT (30 s) and exits 0. Give `docker stop -t` at least that.
STOPSIGNAL SIGTERM

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CALC_PORT', '8000') + '/healthz', timeout=2)"]

# Binds CALC_HOST:CALC_PORT, i.e. 0.0.0.0:8000 unless overridden.
CMD ["python3", "-m", "server"]
