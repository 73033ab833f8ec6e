"""werkzeug's ``ProxyMiddleware`` in front of a Flask app, as werkzeug's docs show it.

Everything under ``/up/`` is proxied with the prefix removed (``/up/x`` -> ``UPSTREAM/x``),
as in werkzeug's docs; the middleware cannot take ``/`` itself (it turns every prefix
into ``/name/``, and ``/`` into ``//``). It opens an ``http.client`` connection per
request and streams the response back.

UPSTREAM: base URL. UPSTREAM_CA: CA file for an https upstream (an ``ssl_context``).
"""

import os
import ssl

from flask import Flask
from werkzeug.middleware.http_proxy import ProxyMiddleware

UPSTREAM = os.environ["UPSTREAM"].rstrip("/") + "/"
CA = os.environ.get("UPSTREAM_CA")

app = Flask(__name__)
app.wsgi_app = ProxyMiddleware(
    app.wsgi_app,
    {
        "/up/": {
            "target": UPSTREAM,
            "remove_prefix": True,
            "ssl_context": ssl.create_default_context(cafile=CA) if CA else None,
        }
    },
)
