"""Request metrics are tallied per worker and published in batches: same figures."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from wsgiproxy.metrics import Metrics

# Bucket bounds exactly (a value on a bound belongs to that bucket), between bounds,
# zero, and past the last finite bound.
DURATIONS = [0.0, 0.005, 0.0051, 0.01, 0.3, 2.5, 7.5, 10.0, 11.0, 0.005, 0.1]
WAITS = [0.0, 0.0005, 0.0006, 0.001, 0.2, 5.0, 60.0]


def _lines(exposition: bytes, prefix: str) -> list[str]:
    """Sample lines of one metric family, without the _created timestamps."""
    return sorted(
        line
        for line in exposition.decode().splitlines()
        if line.startswith(prefix) and "_created" not in line
    )


def test_published_tallies_equal_direct_observations() -> None:
    """A batch gives the exposition one observe() per request would: else the
    latency histograms in Grafana would be off (a bound's values in the next bucket)."""
    metrics = Metrics()
    reference = CollectorRegistry()
    requests = Counter("wsgiproxy_requests", "x", ["method", "status_class"], registry=reference)
    duration = Histogram(
        "wsgiproxy_request_duration_seconds", "x", ["status_class"], registry=reference
    )
    pool_wait = Histogram(
        "wsgiproxy_pool_wait_seconds",
        "x",
        buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        registry=reference,
    )
    for index, seconds in enumerate(DURATIONS):
        method, status = ("GET", 200) if index % 3 else ("BREW", 502)
        metrics.observe_request(method, status, seconds)
        label = "2xx" if status == 200 else "5xx"
        requests.labels("GET" if method == "GET" else "other", label).inc()
        duration.labels(label).observe(seconds)
    for seconds in WAITS:
        metrics.observe_pool_wait(seconds)
        pool_wait.observe(seconds)

    before = metrics.exposition()
    assert "wsgiproxy_requests_total{" not in before.decode()  # tallied, not yet published
    metrics.publish()
    ours, theirs = metrics.exposition(), generate_latest(reference)
    for family in ("wsgiproxy_requests", "wsgiproxy_request_duration", "wsgiproxy_pool_wait"):
        assert _lines(ours, family) == _lines(theirs, family)
        assert _lines(ours, family)

    # A second batch adds to the first; an empty one changes nothing.
    metrics.observe_request("GET", 200, 0.005)
    duration.labels("2xx").observe(0.005)
    requests.labels("GET", "2xx").inc()
    metrics.publish()
    metrics.publish()
    ours, theirs = metrics.exposition(), generate_latest(reference)
    assert _lines(ours, "wsgiproxy_request") == _lines(theirs, "wsgiproxy_request")
