"""wsgiproxy: an HTTP proxy served by gunicorn, with its own upstream connection pool."""

__version__ = "0.1.0"
