"""The stack's ceiling: a bare WSGI app answering 100 bytes, no upstream at all.

Served by the same gunicorn gevent workers as the proxies, it is what gunicorn + gevent
cost per request on this machine: no proxy built on this stack can beat it.
"""

BODY = b"x" * 99 + b"\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
