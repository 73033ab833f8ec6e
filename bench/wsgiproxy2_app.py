"""WSGIProxy2's ``HostProxy`` with its urllib3 client, as its README shows it.

Runs from bench/.venv-wsgiproxy2: WSGIProxy2's import package is also named
``wsgiproxy``, so it cannot share an environment with ours.

UPSTREAM: base URL. UPSTREAM_CA: CA file for an https upstream (passed as the client's
``pool``, a PoolManager that trusts it).
"""

import os

import urllib3

from wsgiproxy import HostProxy

UPSTREAM = os.environ["UPSTREAM"]
CA = os.environ.get("UPSTREAM_CA")

if CA:
    app = HostProxy(UPSTREAM, client="urllib3", pool=urllib3.PoolManager(10, ca_certs=CA))
else:
    app = HostProxy(UPSTREAM, client="urllib3")
