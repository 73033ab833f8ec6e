"""What the tests are built from, one module each.

- ``upstream_server``: the instrumented HTTP/1.1 upstream that records what arrived on
  which connection (named so as not to be mistaken for ``wsgiproxy/upstream.py``).
"""
