"""Where a request goes, decided without a server: routes to groups of upstream servers,
and ``Router.resolve`` for origin-form (reverse) and absolute-form (forward) targets."""

from __future__ import annotations

from typing import Any

import pytest

from wsgiproxy.addresses import Origin
from wsgiproxy.errors import BadRequest, Forbidden, NoRoute, ProxyAuthRequired
from wsgiproxy.proxy.auth import ProxyAuth
from wsgiproxy.proxy.policy import ForwardGuard
from wsgiproxy.proxy.routing import Router, Target, split_authority
from wsgiproxy.settings import Settings
from wsgiproxy.upstreams.routes import Upstreams


def pinned(origin: Origin) -> Any:
    """Stands in for the client's pinned urllib3 pool object of an origin."""
    return ("pool", origin)


def upstreams(**env: str) -> Upstreams:
    settings = Settings.from_env(env)
    return Upstreams(settings.requests, settings.balancing, pinned, settings.health.path)


def router(auth: ProxyAuth | None = None, **env: str) -> Router:
    settings = Settings.from_env(env)
    return Router(
        Upstreams(settings.requests, settings.balancing, pinned),
        ForwardGuard(settings.forward, auth),
        settings.requests.preserve_host,
    )


def environ(**extra: str) -> dict[str, Any]:
    """A local client's request as gunicorn describes it (the proxy listens on 8080)."""
    return {"REMOTE_ADDR": "127.0.0.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080"} | extra


ROUTED = {
    "PROXY_UPSTREAM": "http://default:8000",
    "PROXY_ROUTES": "/api=http://api,/api/v2=http://v2/base",
}


# --- routes -> groups of servers --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "host"),
    [
        ("/api", "api"),
        ("/api/", "api"),
        ("/api/users", "api"),
        ("/api/v2", "v2"),
        ("/api/v2/users", "v2"),
        ("/api/v20", "api"),
        ("/apiary", "default"),
        ("/ap", "default"),
        ("/", "default"),
        ("/API", "default"),
    ],
)
def test_longest_prefix_of_whole_segments_wins(path: str, host: str) -> None:
    """'/api' would swallow '/apiary', or a longer prefix would lose to a shorter one."""
    group = upstreams(**ROUTED).group_for(path)
    assert group is not None
    assert group.pick(0.0).url.host == host


def test_root_route_takes_everything_before_the_fallback() -> None:
    """A '/' route would leave some paths unrouted (404) or lose to PROXY_UPSTREAM."""
    found = upstreams(PROXY_UPSTREAM="http://fallback", PROXY_ROUTES="/=http://root,/x=http://x")
    picked = [found.group_for(p) for p in ("/", "/a/b", "/x/1", "/xy")]
    assert [g.pick(0.0).url.host if g else None for g in picked] == ["root", "root", "x", "root"]


def test_no_route_and_no_fallback_is_none() -> None:
    """A path no route covers would go to a random upstream instead of a 404."""
    assert upstreams(PROXY_ROUTES="/api=http://api").group_for("/other") is None
    assert upstreams().group_for("/anything") is None


def test_each_route_has_its_own_servers_and_a_base_url_is_probed_once() -> None:
    """Health would probe a server twice, or one route's failures would eject a server
    from another route (nginx's upstream blocks are apart too)."""
    found = upstreams(
        PROXY_UPSTREAM="http://a",
        PROXY_ROUTES="/x=http://b,/y=http://a:80/,/zz=http://b",
        HTTP_HEALTH_PATH="/healthz",
    )
    assert [(s.route, s.url.host) for s in found.servers] == [
        ("/zz", "b"),
        ("/x", "b"),
        ("/y", "a"),
        ("/", "a"),
    ]
    probed = [[(s.route, s.url.host) for s in same] for same in found.probe_groups()]
    assert probed == [[("/zz", "b"), ("/x", "b")], [("/y", "a"), ("/", "a")]]
    assert found.servers[1].origin_pool == ("pool", ("http", "b", 80))


def test_health_report_lists_every_route_with_its_servers() -> None:
    """An operator could not see which server a route sends to, or its figures."""
    report = upstreams(**ROUTED).report(0.0)
    assert list(report) == ["/api/v2", "/api", "/"]
    (server,) = report["/api/v2"]
    assert server["url"] == "http://v2/base"
    assert (server["state"], server["in_flight"], server["requests"]) == ("up", 0, 0)


# --- reverse ----------------------------------------------------------------------------


def test_reverse_target_is_the_raw_target_for_a_group() -> None:
    """The upstream would get a re-encoded path or lose the query; each attempt puts the
    picked server's base path before it (tests/test_upstreams.py, test_proxy.py)."""
    target = router(**ROUTED).resolve(environ(HTTP_HOST="proxy"), "/api/v2/a%2Fb?q=1&r=%20")
    assert target.origin == ("http", "v2", 80)
    assert target.path == "/api/v2/a%2Fb?q=1&r=%20"
    assert target.host_header == "v2"
    assert target.group is not None
    server = target.group.pick(0.0)
    assert server is not None and server.base_path + target.path == "/base" + target.path
    assert (target.address, target.peer_allowed) == (None, None)


def test_reverse_host_is_the_upstreams_unless_preserved() -> None:
    """Virtual-hosted upstreams would get the wrong site."""
    env = environ(HTTP_HOST="www.example.com")
    plain = router(PROXY_UPSTREAM="http://10.0.0.5:8000").resolve(env, "/")
    kept = router(PROXY_UPSTREAM="http://10.0.0.5:8000", PROXY_PRESERVE_HOST="1").resolve(env, "/")
    assert (plain.host_header, kept.host_header) == ("10.0.0.5:8000", "www.example.com")


def test_reverse_without_upstream_is_a_404_saying_what_to_set() -> None:
    """A user would get a bare 404 with no hint of PROXY_UPSTREAM."""
    with pytest.raises(NoRoute, match="set PROXY_UPSTREAM or PROXY_ROUTES"):
        router().resolve(environ(), "/x")


# --- forward ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "origin", "path", "host_header"),
    [
        ("http://Example.COM/a?b=1", ("http", "example.com", 80), "/a?b=1", "example.com"),
        ("http://example.com", ("http", "example.com", 80), "/", "example.com"),
        ("http://example.com?q", ("http", "example.com", 80), "/?q", "example.com"),
        ("http://example.com/p#frag", ("http", "example.com", 80), "/p", "example.com"),
        ("https://example.com:8443/", ("https", "example.com", 8443), "/", "example.com:8443"),
        ("http://example.com.:80/", ("http", "example.com", 80), "/", "example.com"),
        ("http://[2001:db8::1]:81/x", ("http", "2001:db8::1", 81), "/x", "[2001:db8::1]:81"),
    ],
)
def test_forward_target_becomes_origin_form(
    raw: str, origin: Origin, path: str, host_header: str
) -> None:
    """The upstream would get absolute-form, a fragment, or a Host that names no site."""
    target = router().resolve(environ(), raw)
    assert target == Target(origin, path, host_header)


@pytest.mark.parametrize(
    ("raw", "host", "error"),
    [
        ("ftp://example.com/", None, "neither a path nor an http"),
        ("*", None, "neither a path nor an http"),
        ("http://user:pw@example.com/", None, "user information"),
        ("http://example.com:0/", None, "bad port"),
        ("http://example.com:99999/", None, "bad port"),
        ("http://[::1/", None, "bad host"),
        ("http://[example]/", None, "bad host"),
        ("http:///path", None, "without a host"),
        ("http://a.example/", "b.example", "Host says b.example"),
    ],
)
def test_forward_targets_that_cannot_be_read_are_400(
    raw: str, host: str | None, error: str
) -> None:
    """A malformed or ambiguous target would reach some upstream anyway."""
    env = environ() if host is None else environ(HTTP_HOST=host)
    with pytest.raises(BadRequest, match=error):
        router().resolve(env, raw)


def test_forward_host_header_may_spell_the_same_authority_differently() -> None:
    """curl's 'Host: example.com' for 'http://example.com:80/' would be refused."""
    target = router().resolve(environ(HTTP_HOST="EXAMPLE.com"), "http://example.com:80/")
    assert target.origin == ("http", "example.com", 80)


def test_forward_refusals_name_the_setting() -> None:
    """A refused user could not tell which setting refused them."""
    with pytest.raises(Forbidden, match="PROXY_FORWARD=0"):
        router(PROXY_FORWARD="0").resolve(environ(), "http://example.com/")
    with pytest.raises(Forbidden, match="PROXY_ALLOW_CLIENTS"):
        router().resolve(environ(REMOTE_ADDR="192.0.2.7"), "http://example.com/")
    with pytest.raises(ProxyAuthRequired):
        router(ProxyAuth({})).resolve(environ(), "http://example.com/")


@pytest.mark.parametrize(
    ("authority", "default", "expected"),
    [
        ("example.com:443", None, ("example.com", 443)),
        ("Example.com.", 80, ("example.com", 80)),
        ("[::1]:8443", None, ("::1", 8443)),
        ("[::ffff:127.0.0.1]", 80, ("::ffff:127.0.0.1", 80)),
    ],
)
def test_split_authority(authority: str, default: int | None, expected: tuple[str, int]) -> None:
    """CONNECT, absolute targets and Host headers would disagree on host and port."""
    assert split_authority(authority, default) == expected


@pytest.mark.parametrize("authority", ["example.com", "[::1]", "a:b:c", "[::1]x:1", ":443"])
def test_split_authority_refuses_what_connect_cannot_use(authority: str) -> None:
    """A CONNECT without a port, or with a mangled host, would dial something."""
    with pytest.raises(BadRequest):
        split_authority(authority, None)
