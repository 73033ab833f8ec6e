"""What the tests are built from; the fixtures in ``tests/conftest.py`` use these.

- ``upstream_server``: the instrumented HTTP/1.1 upstream that records what arrived on
  which connection (named so as not to be mistaken for ``wsgiproxy/upstreams/``).
- ``proxy``: the proxy under real gunicorn or ``flask run``, and ``Proxy`` to drive it.
- ``client``: one request (``request``, ``Reply``), raw bytes (``raw_exchange``), a
  request parked on the upstream (``gated``), curl.
- ``ports``: a refused port and a never-answered one.
- ``processes``: the clean environment children get, ``run``/``run_python`` to run one
  to its end, ``stop_process`` for servers.
- ``stress``: many threads at once joined by one deadline (``run_concurrently``,
  ``Threads``), with a checker thread racing them.
- ``wait``: ``wait_until``, a condition polled with a deadline (never a bare sleep).
"""
