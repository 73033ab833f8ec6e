"""Set-up before anything is measured: system tools, virtualenvs, files, certificates,
the nginx configs, and the copy of the product a run measures."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from constants import BENCH, ROOT


def run_quiet(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout.decode(errors="replace")[-3000:])
        sys.stderr.write(proc.stderr.decode(errors="replace")[-3000:])
        raise SystemExit(f"bench: {' '.join(argv[:4])}... failed ({proc.returncode})")


# -- tools and virtualenvs -----------------------------------------------------------------
def ensure_system_tools(haproxy: bool = False, valgrind: bool = False) -> None:
    """wrk and nginx (HAProxy for the failover scenario, valgrind to count instructions)
    from the system packages, installed when missing (never started as services: the
    bench runs its own, in the foreground)."""
    tools = ["wrk", "nginx"] + (["haproxy"] if haproxy else []) + (["valgrind"] if valgrind else [])
    missing = [t for t in tools if not (shutil.which(t) or Path(f"/usr/sbin/{t}").exists())]
    if not missing:
        return
    if os.geteuid() != 0:
        names = " ".join(missing)
        raise SystemExit(f"bench: {names} missing; install them (apt-get install -y {names})")
    print(f"bench: installing {' '.join(missing)} (apt-get)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_quiet(["apt-get", "update", "-qq"], 300, env)
    # No service may start from the package's scripts: the bench runs its own nginx.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        run_quiet(["apt-get", "install", "-y", "-qq", *missing], 600, env)
    finally:
        if made_policy:
            policy.unlink()


def ensure_venv(name: str) -> Path:
    """bench/.venv-NAME from bench/requirements-NAME.txt; reinstalled when that changes."""
    req = BENCH / f"requirements-{name}.txt"
    venv = BENCH / f".venv-{name}"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()[:16]
    stamp = venv / f".installed-{digest}"
    if stamp.exists():
        return venv / "bin"
    print(f"bench: preparing {venv.relative_to(ROOT)} ({req.name})", flush=True)
    if not (venv / "bin" / "python").exists():
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"
        run_quiet([base, "-m", "venv", str(venv)], 300)
    run_quiet(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            str(req),
        ],
        900,
    )
    for old in venv.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return venv / "bin"


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def haproxy_binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


# -- files and certificates ----------------------------------------------------------------
def prepare_files(tmp: Path) -> str:
    """The upstream's files, nginx's temp paths and a CA with a localhost certificate
    under ``tmp``; the CA's file."""
    import trustme  # in the product venv (requirements.txt)

    os.chmod(tmp, 0o755)  # nginx workers run as nobody when started by root
    www = tmp / "www"
    www.mkdir()
    (www / "100b.bin").write_bytes(b"u" * 99 + b"\n")
    (www / "100k.bin").write_bytes(os.urandom(100 * 1024))
    with open(www / "50m.bin", "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(50):
            f.write(block)
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        p = tmp / "nginx-temp" / d
        p.mkdir(parents=True)
        os.chmod(p, 0o1777)
    os.chmod(www, 0o755)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    return str(tmp / "ca.pem")


# -- nginx configs -------------------------------------------------------------------------
def _nginx_common(tmp: Path, name: str) -> tuple[str, str]:
    """Top-level settings and http-block settings every bench nginx shares."""
    t = tmp / "nginx-temp"
    head = f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 8192; }}
"""
    common = f"""
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
"""
    return head, common


def upstream_nginx_conf(tmp: Path, name: str, p: dict[str, int]) -> str:
    """The upstream: the files over HTTP and HTTPS, and stub_status (its accepts)."""
    head, common = _nginx_common(tmp, name)
    return (
        head
        + f"""
http {{{common}
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    open_file_cache max=100 inactive=60s;
    # Keep client connections for the whole run: what a proxy does with its upstream
    # connections is what the bench counts, not nginx's own recycling.
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server {{ listen 127.0.0.1:{p["up_http"]}; root {tmp}/www; }}
    # Two more ports with the same files: the group of three healthy servers that the
    # "100B c64 group3" cell puts behind one route (one nginx serves all three).
    server {{ listen 127.0.0.1:{p["up_http_b"]}; root {tmp}/www; }}
    server {{ listen 127.0.0.1:{p["up_http_c"]}; root {tmp}/www; }}
    server {{
        listen 127.0.0.1:{p["up_https"]} ssl;
        ssl_certificate {tmp}/server.pem;
        ssl_certificate_key {tmp}/server.pem;
        root {tmp}/www;
    }}
    server {{ listen 127.0.0.1:{p["up_stub"]}; location / {{ stub_status; }} }}
}}
"""
    )


def proxy_nginx_conf(tmp: Path, name: str, p: dict[str, int], ca_file: str) -> str:
    """The nginx reverse proxy: one server per upstream, upstream keepalive 32."""
    head, common = _nginx_common(tmp, name)
    return (
        head
        + f"""
http {{{common}
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    upstream up_http {{ server 127.0.0.1:{p["up_http"]}; keepalive 32; }}
    upstream up_delay {{ server 127.0.0.1:{p["up_delay"]}; keepalive 32; }}
    upstream up_https {{ server 127.0.0.1:{p["up_https"]}; keepalive 32; }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    server {{ listen 127.0.0.1:{p["nginx_http"]}; location / {{ proxy_pass http://up_http; }} }}
    server {{ listen 127.0.0.1:{p["nginx_delay"]}; location / {{ proxy_pass http://up_delay; }} }}
    server {{
        listen 127.0.0.1:{p["nginx_https"]};
        location / {{
            proxy_pass https://up_https;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca_file};
            proxy_ssl_name localhost;
        }}
    }}
}}
"""
    )


def failover_nginx_conf(tmp: Path, name: str, port: int, servers: list[int]) -> str:
    """nginx in front of the failover scenario's three servers: passive health only
    (nginx without the commercial module has no active checks), a failure ejects a
    server for 10 s, a failed request goes on to the next server."""
    head, common = _nginx_common(tmp, name)
    lines = "".join(
        f"        server 127.0.0.1:{s} max_fails=1 fail_timeout=10s;\n" for s in servers
    )
    return (
        head
        + f"""
http {{{common}
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    upstream group {{
{lines}        keepalive 32;
    }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_next_upstream error timeout;
    proxy_connect_timeout 2s;
    server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://group; }} }}
}}
"""
    )


def failover_haproxy_conf(port: int, servers: list[int], health_path: str) -> str:
    """HAProxy in front of the failover scenario's three servers, as the issue asks:
    round robin, an HTTP check every second (default rise 2, fall 3), 3 retries with
    redispatch; keep-alive on both sides (HAProxy's defaults). Foreground, no logs."""
    lines = "".join(
        f"    server s{i} 127.0.0.1:{s} check inter 1s\n" for i, s in enumerate(servers, 1)
    )
    return f"""global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 3
    option redispatch

frontend fe
    bind 127.0.0.1:{port}
    default_backend group

backend group
    balance roundrobin
    option httpchk
    http-check send meth GET uri {health_path} ver HTTP/1.1 hdr Host localhost
{lines}"""


# -- the product's code --------------------------------------------------------------------
def copy_product(source: Path, snap: Path) -> str:
    """Copy a tree's wsgiproxy/ and gunicorn.conf.py to ``snap``; their digest."""
    snap.mkdir()
    shutil.copytree(
        source / "wsgiproxy", snap / "wsgiproxy", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy2(source / "gunicorn.conf.py", snap / "gunicorn.conf.py")
    digest = hashlib.sha256()
    for f in sorted(snap.rglob("*.py")):
        digest.update(f.relative_to(snap).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:12]


def product_commit() -> str:
    """HEAD of the work tree, and whether the product files differ from it right now."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--",
                "wsgiproxy",
                "gunicorn.conf.py",
                "requirements.txt",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + (" + uncommitted changes" if dirty else "")
    except Exception:
        return "?"


def reload_nginx_conf(tmp: Path, name: str, port: int, upstream: int) -> str:
    """The reload scenario's nginx: its own instance (own pid file, so ``nginx -s reload``
    with this config reaches it and no other), the bench proxy's settings in front of the
    upstream's 100 B."""
    head, common = _nginx_common(tmp, name)
    return (
        head
        + f"""
http {{{common}
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://up; }} }}
}}
"""
    )


def websocket_nginx_conf(tmp: Path, name: str, port: int, upstream: int) -> str:
    """The WebSocket scenario's nginx: the standard WebSocket proxy config (HTTP/1.1 to
    the upstream, Upgrade and Connection passed on), 1 worker, read timeout past the run."""
    head, common = _nginx_common(tmp, name)
    return (
        head
        + f"""
http {{{common}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""
    )
