"""A request to a group of servers: which to try, and whether to try the next.

The client reports how far a failed exchange got (``errors.NOT_SENT``, ``SENT``); the
rules of the next attempt live here, as nginx's ``proxy_next_upstream`` and Envoy's
retry policy have them:

- nothing reached the server (a refused or timed-out connect): the next server, whatever
  the method;
- the request was sent and no response came (a reset, a read timeout, an invalid head),
  or the status is one of ``PROXY_FAIL_STATUSES``: the next server only for an
  idempotent method whose body, if any, was kept whole (64 KiB), since nothing has yet
  reached the client; a POST once sent never goes again;
- at most ``PROXY_NEXT_UPSTREAM_TRIES`` servers, never one twice while another is left,
  and while at most max(3, 20% of the requests in flight) of this worker's requests are
  being retried, so that an outage cannot double the load on the servers still up.

Every failure counts against the server that failed (``Server.failed``), except a reused
connection the upstream had closed while idle: that one is replayed once on a new
connection to the same server (``Forwarder._exchange``) and blames nobody.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..client.body import RequestBody
from ..client.exchange import Exchange, Outgoing, UpstreamClient
from ..errors import (
    NOT_SENT,
    SENT,
    ProxyError,
    StaleConnection,
    UpstreamError,
    UpstreamProtocolError,
)
from ..metrics import Metrics
from ..settings import BalancingSettings
from ..upstreams.routes import Group
from ..upstreams.server import Server

log = logging.getLogger(__name__)

#: Methods whose replay cannot change the outcome (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Retries in progress a worker always allows, whatever its load.
MIN_RETRY_BUDGET = 3
#: Share of the requests in flight that may be retries in progress at once.
RETRY_BUDGET_SHARE = 0.2


@dataclass
class Attempts:
    """The servers one request tried, in order, with the status each gave (or would
    have given): the access log's ``upstream_addr`` and ``upstream_status``."""

    servers: list[Server] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def addresses(self) -> str:
        return ",".join(server.address for server in self.servers)

    def status_text(self) -> str:
        return ",".join(str(status) for status in self.statuses)


class Failover:
    """Sends a request to its group, trying the next server when the rules allow."""

    def __init__(
        self,
        balancing: BalancingSettings,
        client: UpstreamClient,
        metrics: Metrics,
        exchange: Callable[[Outgoing], Exchange],
        in_flight: Callable[[], int],
    ) -> None:
        self.tries = balancing.next_upstream_tries
        self.fail_statuses = balancing.fail_statuses
        self.client = client
        self.metrics = metrics
        self._exchange = exchange
        self._in_flight = in_flight
        #: This worker's retries in progress (the budget's count).
        self.retrying = 0

    def send(
        self,
        group: Group,
        method: str,
        raw: str,
        headers: dict[str, str],
        body: RequestBody | None,
        preserve_host: bool,
        attempts: Attempts,
    ) -> Exchange:
        """The exchange of the attempt that answered; its server is ``attempts.servers[-1]``
        and has been told the request started. Raises the last attempt's error when none
        answered (its server told it ended)."""
        budget_taken = False
        try:
            while True:
                now = time.monotonic()
                server = group.pick(now, attempts.servers)
                if server is None:  # unreachable: the caller stops before all are tried
                    raise UpstreamProtocolError("no upstream server left to try", stage=NOT_SENT)
                attempts.servers.append(server)
                if not preserve_host:
                    headers["Host"] = server.host_header
                request = self.client.prepare(
                    server.origin,
                    method,
                    server.base_path + raw,
                    headers,
                    body,
                    origin_pool=server.origin_pool,
                )
                server.started()
                try:
                    exchange = self._exchange(request)
                except StaleConnection as exc:
                    attempts.statuses.append(exc.status)  # a POST on a closed idle socket
                    server.finished(exc.kind)
                    raise
                except UpstreamError as exc:
                    attempts.statuses.append(exc.status)
                    server.finished(exc.kind)
                    self._blame(server, now)
                    reason = exc.kind
                    if not self._again(
                        exc.stage, method, body, group, attempts, reason, exc, budget_taken
                    ):
                        raise
                except ProxyError as exc:
                    # The client's own fault (its body) or a full pool: the server is not
                    # to blame, but the request it had started is over.
                    attempts.statuses.append(exc.status)
                    server.finished(exc.kind)
                    raise
                except BaseException:
                    # A closed pool at shutdown, GreenletExit: over all the same.
                    attempts.statuses.append(500)
                    server.finished("internal-error")
                    raise
                else:
                    status = exchange.response.status
                    if status not in self.fail_statuses:
                        server.succeeded(now)
                        attempts.statuses.append(status)
                        return exchange
                    self._blame(server, now)
                    if not self._again(
                        SENT, method, body, group, attempts, "status", None, budget_taken
                    ):
                        attempts.statuses.append(status)
                        return exchange  # no next server: the client gets this answer
                    attempts.statuses.append(status)
                    self.client.finish(exchange, complete=False)
                    server.finished("upstream-status")
                if not budget_taken:
                    budget_taken = True
                    self.retrying += 1
        finally:
            if budget_taken:
                self.retrying -= 1

    def _blame(self, server: Server, now: float) -> None:
        if server.failed(now):
            log.warning(
                "upstream %s of route %s ejected after %d failure(s) within %gs",
                server.url.url,
                server.route,
                server.ejection.max_fails,
                server.ejection.fail_timeout,
            )

    def _again(
        self,
        stage: str,
        method: str,
        body: RequestBody | None,
        group: Group,
        attempts: Attempts,
        reason: str,
        error: UpstreamError | None,
        holding: bool,
    ) -> bool:
        """May this request go to another server after a failure at ``stage``? A request
        already retrying keeps its place in the budget (``holding``)."""
        if len(attempts.servers) >= self.tries:
            return False
        if stage != NOT_SENT and (
            method not in IDEMPOTENT or (body is not None and not body.replayable)
        ):
            return False
        if group.pick(time.monotonic(), attempts.servers) is None:
            return False
        others = self.retrying - 1 if holding else self.retrying
        if others >= max(MIN_RETRY_BUDGET, RETRY_BUDGET_SHARE * self._in_flight()):
            log.warning(
                "retry budget spent (%d retries in progress): not trying another server",
                self.retrying,
            )
            self.metrics.observe_retry("budget-spent")
            return False
        self.metrics.observe_retry(reason)
        if error is not None:
            log.info("%s; trying the next server of route %s", error.message, group.prefix)
        return True
