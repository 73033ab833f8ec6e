#!/usr/bin/env python3
"""`make bench`: wsgiproxy beside nginx and the Python proxies people use instead.

Everything runs on 127.0.0.1 in one go, side by side: the upstreams (nginx with a 100 B
body and a 100 KiB file, the same nginx over HTTPS with a CA made here, and a 50 ms
delayed upstream), every proxy (each a long-running instance per upstream, so the cells
of one repetition can alternate between proxies without restarting them), and wrk. Per
cell and proxy it measures req/s, p50/p99, errors, upstream connections opened per 1,000
requests, the proxy's RSS (sum over workers) and the CPU seconds of proxy, upstream and
wrk; then the queue-pressure run and the 50 MB memory check. It writes a markdown report
(goals, ratio table, raw medians), the raw results as JSON and a PNG chart under
bench/results/<date>/, and prints the report.

    .venv/bin/python bench/run.py            # the full run (make bench), < 20 min
    .venv/bin/python bench/run.py --quick    # one short repetition (make bench-quick), < 3 min
    .venv/bin/python bench/run.py --only wsgiproxy,flask-urllib3 --reps 5 --duration 5
    .venv/bin/python bench/run.py --profile  # py-spy of wsgiproxy's workers under load

Every process started here is stopped by its pid when the run ends, however it ends
(finally, atexit, SIGTERM/SIGHUP), and every step is bounded in time. What the harness
needs and the product does not is installed here: wrk and nginx from the system packages
when missing, and virtualenvs bench/.venv-wsgiproxy2, bench/.venv-proxypy and
bench/.venv-tools (matplotlib, py-spy) from bench/requirements-*.txt.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PRODUCT_BIN = ROOT / ".venv" / "bin"
RESULTS = BENCH / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

WORKERS = 2  # gunicorn workers of every WSGI proxy (the issue's "2 workers")
DELAY = 0.05  # seconds, the delayed upstream
QUEUE_LIMIT = 8  # HTTP_MAX_CONNECTIONS per worker in the queue-pressure run
QUEUE_CLIENTS = 1000

# -- what runs -----------------------------------------------------------------------------
OURS = "wsgiproxy"
#: name -> (label for the README, in which cells it runs)
PROXIES: dict[str, str] = {
    "wsgiproxy": "wsgiproxy, gevent x2, pool on (defaults but HTTP_MAX_KEEPALIVE_CONNECTIONS=100)",
    "wsgiproxy-nopool": "wsgiproxy, HTTP_POOL_ENABLED=0: a new upstream connection per request",
    "wsgiproxy-gthread": "wsgiproxy under gthread x2 (32 threads each)",
    "flask-requests": "Flask + requests.request per request (gevent x2)",
    "flask-urllib3": "Flask + one shared urllib3.PoolManager per worker (gevent x2)",
    "werkzeug": "werkzeug ProxyMiddleware (http.client per request, gevent x2)",
    "wsgiproxy2": "WSGIProxy2 HostProxy, urllib3 client (own venv, gevent x2)",
    "nginx": "nginx reverse proxy, 1 worker, upstream keepalive 32",
    "direct": "no proxy: wrk straight to the upstream",
    "bare": "bare WSGI app answering 100 B (gevent x2): the stack's ceiling",
    "proxypy": "proxy.py forward proxy (2 workers, 2 acceptors; own venv)",
    "wsgiproxy-x": "wsgiproxy with --x-env settings (an experiment; only when named in --only)",
}
WSGI_ALTERNATIVES = ["flask-requests", "flask-urllib3", "werkzeug", "wsgiproxy2"]
REVERSE = [
    "wsgiproxy",
    "wsgiproxy-nopool",
    "wsgiproxy-gthread",
    "flask-requests",
    "flask-urllib3",
    "werkzeug",
    "wsgiproxy2",
    "nginx",
    "direct",
]


@dataclass(frozen=True)
class Cell:
    name: str
    upstream: str  # "http", "delay", "https"
    path: str
    conns: int
    forward: bool = False

    @property
    def proxies(self) -> list[str]:
        if self.forward:
            return ["wsgiproxy", "wsgiproxy-x", "proxypy"]
        extra = ["bare"] if self.path == "/100b.bin" and self.upstream == "http" else []
        return REVERSE + ["wsgiproxy-x"] + extra


CELLS = [
    Cell("100B c1", "http", "/100b.bin", 1),
    Cell("100B c64", "http", "/100b.bin", 64),
    Cell("100B c256", "http", "/100b.bin", 256),
    Cell("100KiB c1", "http", "/100k.bin", 1),
    Cell("100KiB c64", "http", "/100k.bin", 64),
    Cell("100KiB c256", "http", "/100k.bin", 256),
    Cell("50ms c256", "delay", "/delay", 256),
    Cell("HTTPS 100B c64", "https", "/100b.bin", 64),
    Cell("forward 100B c64", "http", "/100b.bin", 64, forward=True),
]


# -- processes -----------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _all_ppids() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                out[int(entry)] = int(st[1])
    return out


def descendants(pid: int) -> list[int]:
    """pid's children, grandchildren...; pid itself excluded."""
    ppids = _all_ppids()
    kids: dict[int, list[int]] = {}
    for child, parent in ppids.items():
        kids.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of each process, its reaped children included."""
    total = 0
    for pid in pids:
        st = _stat(pid)
        if st:
            total += sum(int(x) for x in st[11:15])
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def _start_time(pid: int) -> str | None:
    st = _stat(pid)
    return st[19] if st else None


class Processes:
    """Every process this run starts, stopped by its pid (then its leftovers by theirs)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.items: list[tuple[str, subprocess.Popen[bytes], int]] = []
        self.lock = threading.Lock()

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stop_signal: int = signal.SIGINT,
    ) -> subprocess.Popen[bytes]:
        with open(self.logdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
            )
        with self.lock:
            self.items.append((name, proc, stop_signal))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int, grace: float = 10.0) -> None:
        if proc.poll() is not None:
            return
        leftovers = [(p, _start_time(p)) for p in descendants(proc.pid)]
        try:
            os.kill(proc.pid, sig)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass  # already gone
        # Workers left behind (a master killed hard): each by its own pid, if still the
        # same process (same start time).
        deadline = time.monotonic() + 3
        for pid, started in leftovers:
            while _start_time(pid) == started and started is not None:
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.05)

    def stop_all(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        # Stop in parallel: each in its own thread (still one pid each).
        threads = [
            threading.Thread(target=self._stop_quietly, args=(proc, sig)) for _, proc, sig in items
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    def _stop_quietly(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        try:
            self.stop(proc, sig)
        except Exception as exc:  # keep stopping the others
            print(f"bench: could not stop pid {proc.pid}: {exc}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(
    url_host: str,
    port: int,
    path: str,
    *,
    https_ctx: ssl.SSLContext | None = None,
    timeout: float = 5.0,
    proxy_abs: bool = False,
) -> tuple[int, bytes]:
    if https_ctx is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            url_host, port, timeout=timeout, context=https_ctx
        )
    else:
        conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- setup: tools, venvs, files, certificates ----------------------------------------------
def run_quiet(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout.decode(errors="replace")[-3000:])
        sys.stderr.write(proc.stderr.decode(errors="replace")[-3000:])
        raise SystemExit(f"bench: {' '.join(argv[:4])}... failed ({proc.returncode})")


def ensure_system_tools() -> None:
    """wrk and nginx from the system packages, installed when missing (never started)."""
    missing = [
        t for t in ("wrk", "nginx") if not (shutil.which(t) or Path(f"/usr/sbin/{t}").exists())
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(
            f"bench: {', '.join(missing)} missing; install them (apt-get install -y wrk nginx)"
        )
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
        run_quiet(["apt-get", "install", "-y", "-qq", "wrk", "nginx"], 600, env)
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


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment less anything that would change a proxy's behaviour."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("PROXY_", "HTTP_", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"))
        and k
        not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "UPSTREAM", "UPSTREAM_CA")
        and not k.startswith("GUNICORN_")
    }
    env.update(extra)
    return env


# -- wrk -----------------------------------------------------------------------------------
@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    error_detail: dict[str, int]
    cpu_s: float


def wrk(
    url: str, conns: int, seconds: float, *, abs_path: str | None = None, timeout_s: float = 8.0
) -> WrkResult:
    threads = 1 if conns == 1 else 2
    argv = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(conns),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        f"{timeout_s:g}s",
        "--latency",
        "-s",
        str(BENCH / "wrk_report.lua"),
        url,
    ]
    if abs_path:
        argv += ["--", abs_path]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    killer = threading.Timer(seconds + timeout_s + 20, lambda: _kill_pid(proc.pid))
    killer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        killer.cancel()
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result ({proc.returncode}): {out[-800:]}")
    d = json.loads(line[8:])
    secs = d["duration_us"] / 1e6
    detail = {k: d[k] for k in ("connect", "read", "write", "status", "timeout")}
    return WrkResult(
        requests=d["requests"],
        seconds=secs,
        rps=d["requests"] / secs if secs else 0.0,
        p50_ms=d["p50_us"] / 1000,
        p90_ms=d["p90_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        errors=sum(detail.values()),
        error_detail=detail,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


def _kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def check_wrk_absolute_form(url_of_listener_port: int | None = None) -> str:
    """Check that wrk sends wrk.path as-is: capture the request line it sends."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        # wrk opens one connection first and closes it without a request: skip it.
        srv.settimeout(5)
        for _ in range(4):
            try:
                conn, _ = srv.accept()
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    got.append(data)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                conn.close()
                if got:
                    return
            except OSError:
                return

    t = threading.Thread(target=accept)
    t.start()
    absolute = "http://127.0.0.1:9/abs-check?x=1"
    with contextlib.suppress(RuntimeError):
        wrk(f"http://127.0.0.1:{port}/", 1, 1, abs_path=absolute, timeout_s=1)
    t.join(6)
    srv.close()
    first = got[0].split(b"\r\n", 1)[0].decode(errors="replace") if got else ""
    if (
        not first.startswith(f"GET {absolute} HTTP/1.1")
        or b"\r\nHost: 127.0.0.1:9\r\n" not in got[0]
    ):
        raise SystemExit(f"bench: wrk does not send absolute-form as set: {first!r}")
    return first


# -- the bench -----------------------------------------------------------------------------
@dataclass
class Instance:
    """One running proxy (or upstream) to measure: where to send requests, whose CPU."""

    proxy: str
    upstream: str
    port: int
    root_pid: int | None  # the pid we started (master); None for "direct"
    workers_fn: Any = None  # () -> [pids] whose RSS is "the proxy's RSS"
    https: bool = False
    prefix: str = ""  # path prefix the proxy serves the upstream under (werkzeug: /up)

    def worker_pids(self) -> list[int]:
        if self.root_pid is None:
            return []
        if self.workers_fn is not None:
            return list(self.workers_fn())
        return descendants(self.root_pid)

    def tree(self) -> list[int]:
        if self.root_pid is None:
            return []
        return [self.root_pid] + descendants(self.root_pid)


@dataclass
class Bench:
    args: argparse.Namespace
    procs: Processes
    tmp: Path
    outdir: Path
    ports: dict[str, int] = field(default_factory=dict)
    inst: dict[tuple[str, str], Instance] = field(default_factory=dict)
    upstream_root: dict[str, int] = field(default_factory=dict)
    ca_file: str = ""
    client_ctx: ssl.SSLContext | None = None
    venv: dict[str, Path] = field(default_factory=dict)
    product_dir: Path = ROOT
    x_env: dict[str, str] = field(default_factory=dict)
    product_digest: str = ""
    x_dir: Path | None = None
    x_digest: str = ""
    product_commit: str = ""

    # ---- files, certificates, upstreams ----
    def prepare_files(self) -> None:
        import trustme  # in the product venv (requirements.txt)

        os.chmod(self.tmp, 0o755)  # nginx workers run as nobody when started by root
        www = self.tmp / "www"
        www.mkdir()
        (www / "100b.bin").write_bytes(b"u" * 99 + b"\n")
        (www / "100k.bin").write_bytes(os.urandom(100 * 1024))
        with open(www / "50m.bin", "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(50):
                f.write(block)
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            p = self.tmp / "nginx-temp" / d
            p.mkdir(parents=True)
            os.chmod(p, 0o1777)
        os.chmod(www, 0o755)
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        ca.cert_pem.write_to_path(str(self.tmp / "ca.pem"))
        leaf.private_key_and_cert_chain_pem.write_to_path(str(self.tmp / "server.pem"))
        self.ca_file = str(self.tmp / "ca.pem")
        self.client_ctx = ssl.create_default_context(cafile=self.ca_file)

    def _nginx(self, name: str, conf: str) -> subprocess.Popen[bytes]:
        path = self.tmp / f"{name}.conf"
        path.write_text(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return self.procs.start(
            name,
            [
                nginx,
                "-p",
                str(self.tmp),
                "-c",
                str(path),
                "-e",
                str(self.tmp / f"{name}-error.log"),
            ],
            stop_signal=signal.SIGTERM,
        )

    def _nginx_common(self, name: str) -> tuple[str, str]:
        """Top-level settings and http-block settings every bench nginx shares."""
        t = self.tmp / "nginx-temp"
        head = f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {self.tmp}/{name}.pid;
error_log {self.tmp}/{name}-error.log warn;
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

    def start_upstreams(self) -> None:
        p = self.ports
        for k in ("up_http", "up_https", "up_stub", "up_delay"):
            p[k] = free_port()
        head, common = self._nginx_common("nginx-upstream")
        conf = (
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
    server {{ listen 127.0.0.1:{p["up_http"]}; root {self.tmp}/www; }}
    server {{
        listen 127.0.0.1:{p["up_https"]} ssl;
        ssl_certificate {self.tmp}/server.pem;
        ssl_certificate_key {self.tmp}/server.pem;
        root {self.tmp}/www;
    }}
    server {{ listen 127.0.0.1:{p["up_stub"]}; location / {{ stub_status; }} }}
}}
"""
        )
        up = self._nginx("nginx-upstream", conf)
        self.upstream_root["http"] = self.upstream_root["https"] = up.pid
        delay = self.procs.start(
            "upstream-delay",
            [
                str(PRODUCT_BIN / "python"),
                str(BENCH / "upstream_delay.py"),
                str(p["up_delay"]),
                str(DELAY),
            ],
            env=clean_env(),
        )
        self.upstream_root["delay"] = delay.pid

    def upstream_url(self, upstream: str) -> str:
        return {
            "http": f"http://127.0.0.1:{self.ports['up_http']}",
            "https": f"https://127.0.0.1:{self.ports['up_https']}",
            "delay": f"http://127.0.0.1:{self.ports['up_delay']}",
        }[upstream]

    def upstream_accepts(self, upstream: str) -> int:
        """Connections the upstream has accepted so far (this query's own included)."""
        if upstream == "delay":
            _, body = http_get("127.0.0.1", self.ports["up_delay"], "/__stats")
            return int(json.loads(body)["accepts"])
        _, body = http_get("127.0.0.1", self.ports["up_stub"], "/")
        m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)", body)
        assert m, body
        return int(m.group(1))

    # ---- proxies ----
    def _gunicorn_baseline(
        self, name: str, module: str, upstream: str, port: int, bin_dir: Path, **env: str
    ) -> subprocess.Popen[bytes]:
        argv = [
            str(bin_dir / "gunicorn"),
            "-k",
            "gevent",
            "-w",
            str(WORKERS),
            "--worker-connections",
            "1000",
            "--keep-alive",
            "15",
            "-b",
            f"127.0.0.1:{port}",
            "--no-control-socket",
            "--chdir",
            str(BENCH),
            "--log-level",
            "warning",
            "--error-logfile",
            "-",
            module,
        ]
        return self.procs.start(name, argv, env=clean_env(**env), cwd=BENCH)

    def _wsgiproxy(
        self,
        name: str,
        upstream: str | None,
        port: int,
        product_dir: Path | None = None,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        settings = {
            "PROXY_BIND": f"127.0.0.1:{port}",
            "PROXY_WORKERS": str(WORKERS),
            "PROXY_WORKER_CLASS": "gevent",
            "PROXY_ACCESS_LOG": "",
            # The idle capacity of the flask-urllib3 baseline's PoolManager(maxsize=100), as
            # the README's tuning section advises past ~20 clients per worker: the default,
            # 20, closes and reopens connections at 64 clients and more.
            "HTTP_MAX_KEEPALIVE_CONNECTIONS": "100",
        }
        if upstream:
            settings["PROXY_UPSTREAM"] = self.upstream_url(upstream)
            if upstream == "https":
                settings["HTTP_CA_BUNDLE"] = self.ca_file
        settings.update(env)
        argv = [
            str(PRODUCT_BIN / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            "--no-control-socket",
            "wsgiproxy.app:app",
        ]
        return self.procs.start(
            name, argv, env=clean_env(**settings), cwd=product_dir or self.product_dir
        )

    def _copy_product(self, source: Path, snap: Path) -> str:
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

    def snapshot_product(self) -> None:
        """Copy wsgiproxy/ and gunicorn.conf.py as they are now, and run every wsgiproxy
        instance from the copy: others edit the work tree while a run goes on, and all
        instances must run one and the same code (--live-tree runs the tree itself)."""
        if getattr(self.args, "x_tree", None):
            # wsgiproxy-x runs another version of the code (e.g. a `git worktree` of the
            # commit before a change), so that a change is measured beside its "before".
            self.x_dir = self.tmp / "product-x"
            self.x_digest = self._copy_product(Path(self.args.x_tree).resolve(), self.x_dir)
        if self.args.live_tree:
            self.product_dir = ROOT
            return
        snap = self.tmp / "product"
        self.product_digest = self._copy_product(ROOT, snap)
        self.product_commit = product_commit()
        self.product_dir = snap

    def start_proxy(self, proxy: str, upstream: str) -> None:
        key = (proxy, upstream)
        name = f"{proxy}-{upstream}"
        url = self.upstream_url(upstream)
        ca = {"UPSTREAM_CA": self.ca_file} if upstream == "https" else {}
        if proxy == "direct":
            port = self.ports["up_" + upstream]
            self.inst[key] = Instance(proxy, upstream, port, None, https=upstream == "https")
            return
        if proxy == "nginx":
            self.inst[key] = Instance(
                proxy, upstream, self.ports[f"nginx_{upstream}"], self.upstream_root["nginx-proxy"]
            )
            return
        port = free_port()
        if proxy == "wsgiproxy":
            proc = self._wsgiproxy(name, upstream, port)
        elif proxy == "wsgiproxy-nopool":
            proc = self._wsgiproxy(name, upstream, port, HTTP_POOL_ENABLED="0")
        elif proxy == "wsgiproxy-gthread":
            proc = self._wsgiproxy(name, upstream, port, PROXY_WORKER_CLASS="gthread")
        elif proxy == "wsgiproxy-x":
            proc = self._wsgiproxy(name, upstream, port, self.x_dir, **self.x_env)
        elif proxy == "wsgiproxy-q8":
            proc = self._wsgiproxy(name, upstream, port, HTTP_MAX_CONNECTIONS=str(QUEUE_LIMIT))
        elif proxy == "flask-requests":
            extra = {"REQUESTS_CA_BUNDLE": self.ca_file} if upstream == "https" else {}
            proc = self._gunicorn_baseline(
                name, "flask_requests_app:app", upstream, port, PRODUCT_BIN, UPSTREAM=url, **extra
            )
        elif proxy == "flask-urllib3":
            proc = self._gunicorn_baseline(
                name, "flask_urllib3_app:app", upstream, port, PRODUCT_BIN, UPSTREAM=url, **ca
            )
        elif proxy == "flask-urllib3-q8":
            proc = self._gunicorn_baseline(
                name,
                "flask_urllib3_app:app",
                upstream,
                port,
                PRODUCT_BIN,
                UPSTREAM=url,
                POOL_MAXSIZE=str(QUEUE_LIMIT),
                POOL_BLOCK="1",
                **ca,
            )
        elif proxy == "werkzeug":
            proc = self._gunicorn_baseline(
                name, "werkzeug_app:app", upstream, port, PRODUCT_BIN, UPSTREAM=url, **ca
            )
        elif proxy == "wsgiproxy2":
            proc = self._gunicorn_baseline(
                name,
                "wsgiproxy2_app:app",
                upstream,
                port,
                self.venv["wsgiproxy2"],
                UPSTREAM=url,
                **ca,
            )
        elif proxy == "bare":
            proc = self._gunicorn_baseline(name, "bare_app:app", upstream, port, PRODUCT_BIN)
        elif proxy == "proxypy":
            proc = self.procs.start(
                name,
                [
                    str(self.venv["proxypy"] / "proxy"),
                    "--hostname",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--num-workers",
                    str(WORKERS),
                    "--num-acceptors",
                    str(WORKERS),
                    "--log-level",
                    "WARNING",
                ],
                env=clean_env(),
                cwd=self.tmp,
            )
            self.inst[key] = Instance(
                proxy,
                upstream,
                port,
                proc.pid,
                workers_fn=lambda pid=proc.pid: [pid] + descendants(pid),
            )
            return
        else:
            raise ValueError(proxy)
        self.inst[key] = Instance(
            proxy, upstream, port, proc.pid, prefix="/up" if proxy == "werkzeug" else ""
        )

    def start_nginx_proxy(self) -> None:
        p = self.ports
        for u in ("http", "delay", "https"):
            p[f"nginx_{u}"] = free_port()
        head, common = self._nginx_common("nginx-proxy")
        conf = (
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
            proxy_ssl_trusted_certificate {self.ca_file};
            proxy_ssl_name localhost;
        }}
    }}
}}
"""
        )
        proc = self._nginx("nginx-proxy", conf)
        self.upstream_root["nginx-proxy"] = proc.pid

    def wait_ready(self, deadline_s: float = 90.0) -> None:
        """Every instance answers 200 through the whole chain, or the run stops."""
        pending = dict(self.inst)
        deadline = time.monotonic() + deadline_s
        last_err: dict[tuple[str, str], str] = {}
        while pending and time.monotonic() < deadline:
            for key, inst in list(pending.items()):
                if inst.root_pid is not None and _stat(inst.root_pid) is None:
                    raise SystemExit(
                        f"bench: {key[0]} ({key[1]}) exited at start; see {self.procs.logdir}/{key[0]}-{key[1]}.log"
                    )
                path = "/delay" if inst.upstream == "delay" else "/100b.bin"
                try:
                    if inst.proxy == "proxypy":
                        status, _ = http_get(
                            "127.0.0.1", inst.port, f"{self.upstream_url('http')}{path}", timeout=2
                        )
                    else:
                        ctx = (
                            self.client_ctx
                            if inst.proxy == "direct" and inst.upstream == "https"
                            else None
                        )
                        status, _ = http_get(
                            "127.0.0.1", inst.port, inst.prefix + path, https_ctx=ctx, timeout=2
                        )
                    if status == 200:
                        del pending[key]
                    else:
                        last_err[key] = f"status {status}"
                except OSError as exc:
                    last_err[key] = str(exc)
            time.sleep(0.2)
        if pending:
            names = ", ".join(f"{k[0]}/{k[1]} ({last_err.get(k, '?')})" for k in pending)
            raise SystemExit(
                f"bench: not ready after {deadline_s:.0f}s: {names}; logs in {self.procs.logdir}"
            )

    def wait_upstream_quiet(self, upstream: str, limit_s: float = 15.0) -> None:
        """Wait until the upstream gets no more requests: a proxy may still be working
        through requests queued by clients that have gone (none of ours, but some)."""
        deadline = time.monotonic() + limit_s
        last = -1
        while time.monotonic() < deadline:
            if upstream == "delay":
                _, body = http_get("127.0.0.1", self.ports["up_delay"], "/__stats")
                now = int(json.loads(body)["requests"])
            else:
                _, body = http_get("127.0.0.1", self.ports["up_stub"], "/")
                m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)", body)
                now = int(m.group(3)) if m else 0
            if now - last <= 1:  # only our own stats request since the last look
                return
            last = now
            time.sleep(0.3)

    # ---- one measurement ----
    def measure(
        self,
        inst: Instance,
        cell_path: str,
        conns: int,
        seconds: float,
        *,
        abs_url: str | None = None,
        timeout_s: float = 8.0,
    ) -> dict[str, Any]:
        up = inst.upstream
        up_tree = [self.upstream_root[up]] + descendants(self.upstream_root[up])
        proxy_tree = inst.tree()
        scheme = "https" if inst.https else "http"
        url = f"{scheme}://127.0.0.1:{inst.port}{'/' if abs_url else inst.prefix + cell_path}"
        a0 = self.upstream_accepts(up)
        c_proxy0, c_up0 = cpu_seconds(proxy_tree), cpu_seconds(up_tree)
        res = wrk(url, conns, seconds, abs_path=abs_url, timeout_s=timeout_s)
        c_proxy1, c_up1 = cpu_seconds(proxy_tree), cpu_seconds(up_tree)
        a1 = self.upstream_accepts(up)
        workers = inst.worker_pids()
        rss = [rss_bytes(pid) for pid in workers]
        opened = max(0, a1 - a0 - 1)
        return {
            "rps": res.rps,
            "p50_ms": res.p50_ms,
            "p90_ms": res.p90_ms,
            "p99_ms": res.p99_ms,
            "requests": res.requests,
            "seconds": res.seconds,
            "errors": res.errors,
            "error_detail": res.error_detail,
            "upstream_conns": opened,
            "conns_per_1k": opened * 1000 / res.requests if res.requests else None,
            "rss_mb": sum(rss) / 1e6 if rss else None,
            "rss_per_worker_mb": sum(rss) / len(rss) / 1e6 if rss else None,
            "workers": len(rss),
            "cpu_proxy_s": c_proxy1 - c_proxy0 if proxy_tree else None,
            "cpu_upstream_s": c_up1 - c_up0,
            "cpu_wrk_s": res.cpu_s,
        }


# -- statistics and report -----------------------------------------------------------------
def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


METRICS = [
    "rps",
    "p50_ms",
    "p99_ms",
    "errors",
    "conns_per_1k",
    "rss_mb",
    "rss_per_worker_mb",
    "cpu_proxy_s",
    "cpu_upstream_s",
    "cpu_wrk_s",
    "requests",
]


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["cell"], r["proxy"]), []).append(r)
    for (cell, proxy), rs in groups.items():
        m = {k: med([r[k] for r in rs]) for k in METRICS}
        m["reps"] = len(rs)
        m["errors_total"] = sum(r["errors"] for r in rs)
        out.setdefault(cell, {})[proxy] = m
    return out


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "—"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def evaluate_goals(
    M: dict[str, Any], queue: dict[str, Any], memory: dict[str, Any]
) -> list[tuple[str, str, bool | None]]:
    """(goal line, measured, PASS/FAIL/None=not measured)."""
    goals: list[tuple[str, str, bool | None]] = []

    def get(cell: str, proxy: str, metric: str) -> float | None:
        return M.get(cell, {}).get(proxy, {}).get(metric)

    def add(text: str, value: float | None, passes: Any, shown: str) -> None:
        goals.append(
            (
                text,
                shown if value is not None else "not measured",
                None if value is None else bool(passes(value)),
            )
        )

    c64 = "100B c64"
    ours = get(c64, OURS, "rps")
    alts = {p: get(c64, p, "rps") for p in WSGI_ALTERNATIVES if get(c64, p, "rps") is not None}
    best = max(alts, key=lambda p: alts[p] or 0) if alts else None
    r = ratio(ours, alts[best]) if best else None
    add(
        "100 B at 64 connections: at least 1.5x the best WSGI alternative's req/s",
        r,
        lambda x: x >= 1.5,
        f"{fmt(r, 2)}x ({fmt(ours)} vs {best} {fmt(alts.get(best))} req/s)" if best else "",
    )
    r = ratio(ours, get(c64, "flask-requests", "rps"))
    add(
        "100 B at 64 connections: at least 3x Flask + requests per request",
        r,
        lambda x: x >= 3,
        f"{fmt(r, 2)}x ({fmt(ours)} vs {fmt(get(c64, 'flask-requests', 'rps'))} req/s)",
    )
    r = ratio(ours, get(c64, "nginx", "rps"))
    add(
        "100 B at 64 connections: at least 0.15x nginx",
        r,
        lambda x: x >= 0.15,
        f"{fmt(r, 2)}x ({fmt(ours)} vs {fmt(get(c64, 'nginx', 'rps'))} req/s)",
    )
    r = ratio(ours, get(c64, "bare", "rps"))
    add(
        "100 B at 64 connections: at least 0.45x the stack's ceiling (bare WSGI app)",
        r,
        lambda x: x >= 0.45,
        f"{fmt(r, 2)}x ({fmt(ours)} vs {fmt(get(c64, 'bare', 'rps'))} req/s)",
    )
    fw = "forward 100B c64"
    r = ratio(get(fw, OURS, "rps"), get(fw, "proxypy", "rps"))
    add(
        "Forward mode, 100 B at 64 connections: at least 0.5x proxy.py",
        r,
        lambda x: x >= 0.5,
        f"{fmt(r, 2)}x ({fmt(get(fw, OURS, 'rps'))} vs {fmt(get(fw, 'proxypy', 'rps'))} req/s)",
    )
    hs = "HTTPS 100B c64"
    r = ratio(get(hs, OURS, "rps"), get(hs, "wsgiproxy-nopool", "rps"))
    add(
        "HTTPS upstream at 64: at least 10x the new-connection-per-request baseline",
        r,
        lambda x: x >= 10,
        f"{fmt(r, 2)}x ({fmt(get(hs, OURS, 'rps'))} vs {fmt(get(hs, 'wsgiproxy-nopool', 'rps'))} req/s)",
    )
    for cell in ("100B c1", "100KiB c1"):
        d = get(cell, "direct", "p50_ms")
        o, f = get(cell, OURS, "p50_ms"), get(cell, "flask-urllib3", "p50_ms")
        if None not in (d, o, f):
            added_o, added_f = o - d, f - d  # type: ignore[operator]
            r = ratio(added_o, added_f)
            add(
                f"1 connection ({cell}): added latency over no proxy at most half the shared-PoolManager app's",
                r,
                lambda x: x <= 0.5,
                f"{fmt(r, 2)}x (p50 +{added_o * 1000:.0f} µs vs +{added_f * 1000:.0f} µs over direct {d * 1000:.0f} µs)",
            )
        else:
            add(
                f"1 connection ({cell}): added latency at most half the shared-PoolManager app's",
                None,
                None,
                "",
            )
    for cell in ("100B c256", "100KiB c256", "50ms c256"):
        o, f = get(cell, OURS, "p99_ms"), get(cell, "flask-urllib3", "p99_ms")
        r = ratio(o, f)
        add(
            f"256 connections ({cell}): p99 at most a quarter of the shared-PoolManager app's",
            r,
            lambda x: x <= 0.25,
            f"{fmt(r, 2)}x ({fmt(o, 1)} ms vs {fmt(f, 1)} ms)",
        )
    q = queue.get("wsgiproxy-q8")
    if q:
        limit = queue["limit_rps"]
        r = ratio(q["rps"], limit)
        alone = queue.get("direct")
        note = (
            (
                f"; the upstream alone with {WORKERS * QUEUE_LIMIT} connections: {fmt(alone['rps'])} = "
                f"{fmt(alone['rps'] / limit * 100, 1)}%"
            )
            if alone
            else ""
        )
        add(
            "Queue pressure: at least 95% of the limit's throughput",
            r,
            lambda x: x >= 0.95,
            f"{fmt((r or 0) * 100, 1)}% ({fmt(q['rps'])} of {fmt(limit)} req/s{note})",
        )
        ideal = QUEUE_CLIENTS / q["rps"] * 1000 if q["rps"] else None
        r = ratio(q["p99_ms"], ideal)
        add(
            "Queue pressure: p99 at most 1.3x the queueing ideal (clients / throughput)",
            r,
            lambda x: x <= 1.3,
            f"{fmt(r, 2)}x (p99 {fmt(q['p99_ms'])} ms, ideal {fmt(ideal)} ms)",
        )
        add(
            "Queue pressure: no errors",
            float(q["errors_total"]),
            lambda x: x == 0,
            f"{q['errors_total']} errors over all repetitions",
        )
    else:
        add("Queue pressure", None, None, "")
    ours_rss = max_rss_per_worker(M, OURS)
    theirs_rss = max_rss_per_worker(M, "flask-urllib3")
    r = ratio(ours_rss, theirs_rss)
    add(
        "Memory: RSS per worker at most 1.2x the shared-PoolManager app's",
        r,
        lambda x: x <= 1.2,
        f"{fmt(r, 2)}x ({fmt(ours_rss, 1)} MB vs {fmt(theirs_rss, 1)} MB, largest cell median)",
    )
    m50 = memory.get(OURS)
    add(
        "Memory: a 50 MB response adds under 5 MB",
        m50,
        lambda x: x < 5,
        f"+{fmt(m50, 1)} MB peak RSS in the worker that served it" if m50 is not None else "",
    )
    return goals


def max_rss_per_worker(M: dict[str, Any], proxy: str) -> float | None:
    vals = [
        cells[proxy]["rss_per_worker_mb"]
        for cells in M.values()
        if proxy in cells and cells[proxy].get("rss_per_worker_mb")
    ]
    return max(vals) if vals else None


def report(
    meta: dict[str, Any],
    M: dict[str, Any],
    queue: dict[str, Any],
    memory: dict[str, Any],
    goals: list[tuple[str, str, bool | None]],
) -> str:
    cells = [c.name for c in CELLS if c.name in M]
    lines = [
        f"# wsgiproxy benchmark — {meta['date']}",
        "",
        f"- machine: {meta['machine']}",
        f"- versions: {meta['versions_line']}",
        f"- run: {meta['run_line']}",
        "",
        "## Goals",
        "",
    ]
    for text, shown, ok in goals:
        mark = "PASS" if ok else ("FAIL" if ok is False else "n/a")
        lines.append(f"- **{mark}** {text}: {shown}")
    lines += [
        "",
        "## wsgiproxy against each alternative",
        "",
        "Each entry: wsgiproxy's req/s ÷ theirs, then wsgiproxy's p99 ÷ theirs "
        "(req/s above 1 and p99 below 1 favour wsgiproxy). Medians over repetitions.",
        "",
    ]
    alts = [p for p in PROXIES if p != OURS and any(p in M[c] for c in cells)]
    lines.append("| against | " + " | ".join(cells) + " |")
    lines.append("|---|" + "---|" * len(cells))
    for alt in alts:
        row = []
        for c in cells:
            o, a = M[c].get(OURS), M[c].get(alt)
            if not o or not a:
                row.append("—")
                continue
            rr, pr = ratio(o["rps"], a["rps"]), ratio(o["p99_ms"], a["p99_ms"])
            row.append(f"{fmt(rr, 2)}× / {fmt(pr, 2)}×")
        lines.append(f"| {alt} | " + " | ".join(row) + " |")
    lines += [
        "",
        "## Raw medians",
        "",
        "req/s, latency (wrk --latency), errors (non-2xx + socket errors, all repetitions), "
        "upstream connections opened per 1,000 requests, proxy RSS summed over its workers, "
        "CPU seconds during the run of the proxy (all its processes), the upstream and wrk, "
        "and the proxy's CPU per request.",
        "",
        "| cell | proxy | req/s | p50 ms | p99 ms | errors | up conns/1k | RSS MB | CPU proxy s | CPU upstream s | CPU wrk s | proxy CPU µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        for proxy in PROXIES:
            m = M[c].get(proxy)
            if not m:
                continue
            per_req = (
                (m["cpu_proxy_s"] / m["requests"] * 1e6)
                if m.get("cpu_proxy_s") is not None and m["requests"]
                else None
            )
            lines.append(
                f"| {c} | {proxy} | {fmt(m['rps'])} | {fmt(m['p50_ms'], 2)} | {fmt(m['p99_ms'], 2)} | "
                f"{m['errors_total']} | {fmt(m['conns_per_1k'], 1)} | {fmt(m['rss_mb'], 1)} | "
                f"{fmt(m['cpu_proxy_s'], 2)} | {fmt(m['cpu_upstream_s'], 2)} | {fmt(m['cpu_wrk_s'], 2)} | {fmt(per_req)} |"
            )
    if queue:
        lines += [
            "",
            f"## Queue pressure: {QUEUE_CLIENTS} clients, {QUEUE_LIMIT} upstream connections per worker "
            f"x {WORKERS} workers, {DELAY * 1000:.0f} ms upstream",
            "",
            f"Limit: {WORKERS} x {QUEUE_LIMIT} x {1 / DELAY:.0f} = {fmt(queue['limit_rps'])} req/s; "
            "queueing ideal latency = clients / throughput.",
            "",
            "| proxy | req/s | % of limit | p50 ms | p99 ms | ideal ms | p99 / ideal | errors | up conns/1k |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for proxy in ("wsgiproxy-q8", "flask-urllib3-q8", "direct"):
            q = queue.get(proxy)
            if not q:
                continue
            clients = WORKERS * QUEUE_LIMIT if proxy == "direct" else QUEUE_CLIENTS
            ideal = clients / q["rps"] * 1000 if q["rps"] else None
            label = f"upstream alone, {clients} connections" if proxy == "direct" else proxy
            lines.append(
                f"| {label} | {fmt(q['rps'])} | {fmt(q['rps'] / queue['limit_rps'] * 100, 1)}% | {fmt(q['p50_ms'])} | "
                f"{fmt(q['p99_ms'])} | {fmt(ideal)} | {fmt(ratio(q['p99_ms'], ideal), 2)} | {q['errors_total']} "
                f"({q['error_kinds']}) | {fmt(q['conns_per_1k'], 1)} |"
            )
    if memory:
        lines += [
            "",
            "## A 50 MB response",
            "",
            "Peak RSS growth of the worker that served it, over its RSS before (largest of 3 downloads).",
            "",
            "| proxy | adds MB |",
            "|---|---|",
        ]
        for proxy, mb in memory.items():
            lines.append(f"| {proxy} | {fmt(mb, 1)} |")
    lines += ["", "Chart: `chart.png` beside this file; every run: `results.json`.", ""]
    return "\n".join(lines)


# -- the phases ----------------------------------------------------------------------------
def versions(bench: Bench) -> dict[str, str]:
    v: dict[str, str] = {}

    def py_versions(bin_dir: Path, names: list[str]) -> dict[str, str]:
        code = (
            "import importlib.metadata as m, json, sys\n"
            f"out={{'python': sys.version.split()[0]}}\n"
            f"for n in {names!r}:\n"
            "    try: out[n]=m.version(n)\n"
            "    except Exception: pass\n"
            "print(json.dumps(out))"
        )
        try:
            return json.loads(
                subprocess.run(
                    [str(bin_dir / "python"), "-c", code], capture_output=True, timeout=60
                ).stdout
            )
        except Exception:
            return {}

    v.update(
        py_versions(
            PRODUCT_BIN,
            ["flask", "werkzeug", "urllib3", "gunicorn", "gevent", "requests", "greenlet"],
        )
    )
    if "wsgiproxy2" in bench.venv:
        w = py_versions(bench.venv["wsgiproxy2"], ["WSGIProxy2", "WebOb", "urllib3"])
        v["WSGIProxy2"] = w.get("WSGIProxy2", "?")
        v["WebOb"] = w.get("WebOb", "?")
    if "proxypy" in bench.venv:
        v["proxy.py"] = py_versions(bench.venv["proxypy"], ["proxy.py"]).get("proxy.py", "?")
    nginx = subprocess.run(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-v"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    v["nginx"] = (nginx.stderr or nginx.stdout).strip().rpartition("/")[2]
    w = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    v["wrk"] = (w.stdout + w.stderr).split()[1] if (w.stdout + w.stderr).split()[1:] else "?"
    v["wsgiproxy commit"] = bench.product_commit or product_commit()
    return v


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


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    u = platform.uname()
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, {u.system} {u.release} {u.machine}, {platform.node()}"


def run_bench(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    outdir = RESULTS / stamp
    (outdir / "logs").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="wsgiproxy-bench-"))
    procs = Processes(outdir / "logs")
    atexit.register(procs.stop_all)
    atexit.register(shutil.rmtree, tmp, True)
    bench = Bench(args, procs, tmp, outdir)
    try:
        return _run(bench, args, outdir, stamp, t_start)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def _run(bench: Bench, args: argparse.Namespace, outdir: Path, stamp: str, t_start: float) -> int:
    only = set(args.only.split(",")) if args.only else None
    if only:
        unknown = only - set(PROXIES) - {"queue", "memory"}
        if unknown:
            raise SystemExit(
                f"bench: unknown --only {sorted(unknown)}; choose from {', '.join(PROXIES)}"
            )
        only.add(OURS)
    want = lambda p: (only is None and p != "wsgiproxy-x") or (only is not None and p in only)  # noqa: E731
    bench.x_env = dict(kv.split("=", 1) for kv in args.x_env.split(",") if kv) if args.x_env else {}

    ensure_system_tools()
    if want("wsgiproxy2"):
        bench.venv["wsgiproxy2"] = ensure_venv("wsgiproxy2")
    if want("proxypy"):
        bench.venv["proxypy"] = ensure_venv("proxypy")
    bench.venv["tools"] = ensure_venv("tools")
    abs_line = check_wrk_absolute_form()
    t_setup = time.monotonic()

    bench.snapshot_product()
    bench.prepare_files()
    bench.start_upstreams()
    bench.start_nginx_proxy()
    cells = [c for c in CELLS if not args.cells or c.name in args.cells]
    needed: set[tuple[str, str]] = set()
    for c in cells:
        for p in c.proxies:
            if want(p):
                needed.add((p, c.upstream))
    do_queue = not args.no_queue and (only is None or "queue" in only or "flask-urllib3" in only)
    if do_queue:
        needed |= {("wsgiproxy-q8", "delay"), ("flask-urllib3-q8", "delay"), ("direct", "delay")}
    for p, u in sorted(needed):
        bench.start_proxy(p, u)
    print(
        f"bench: {len(needed)} instances starting (results: {outdir.relative_to(ROOT)})", flush=True
    )
    bench.wait_ready()
    print(
        f"bench: ready in {time.monotonic() - t_setup:.1f}s; wrk absolute-form check: {abs_line!r}",
        flush=True,
    )

    runs: list[dict[str, Any]] = []
    queue_runs: list[dict[str, Any]] = []
    deadline = t_start + args.budget * 60
    reps_done = 0
    for rep in range(args.reps):
        if rep > 0 and time.monotonic() > deadline:
            print(f"bench: time budget reached; stopping after {rep} repetitions", flush=True)
            break
        for cell in cells:
            order = [p for p in cell.proxies if want(p)]
            k = rep % len(order)
            order = order[k:] + order[:k]  # rotate: no proxy always runs first or last
            if rep % 2:
                order.reverse()
            for proxy in order:
                inst = bench.inst[(proxy, cell.upstream)]
                abs_url = f"{bench.upstream_url('http')}{cell.path}" if cell.forward else None
                if rep == 0 and args.warmup > 0:
                    bench.measure(inst, cell.path, cell.conns, args.warmup, abs_url=abs_url)
                m = bench.measure(inst, cell.path, cell.conns, args.duration, abs_url=abs_url)
                m.update(cell=cell.name, proxy=proxy, rep=rep)
                runs.append(m)
                print(
                    f"  rep {rep + 1} {cell.name:<17} {proxy:<18} {m['rps']:>9,.0f} req/s  p50 {m['p50_ms']:>8.2f}  "
                    f"p99 {m['p99_ms']:>8.2f} ms  err {m['errors']:<4} up/1k {fmt(m['conns_per_1k'], 1):>6}  "
                    f"rss {fmt(m['rss_mb'], 0):>4} MB",
                    flush=True,
                )
        if do_queue:
            # "direct": wrk alone on the upstream with as many connections as the proxies
            # may open (workers x 8): what the limit comes to on this machine.
            order = ["wsgiproxy-q8", "flask-urllib3-q8", "direct"]
            if rep % 2:
                order.reverse()
            for proxy in order:
                inst = bench.inst[(proxy, "delay")]
                bench.wait_upstream_quiet("delay")  # the previous run's queue has drained
                clients = WORKERS * QUEUE_LIMIT if proxy == "direct" else QUEUE_CLIENTS
                m = bench.measure(inst, "/delay", clients, args.queue_duration, timeout_s=20)
                m.update(cell="queue", proxy=proxy, rep=rep)
                queue_runs.append(m)
                print(
                    f"  rep {rep + 1} {'queue c' + str(clients):<17} {proxy:<18} {m['rps']:>9,.0f} req/s  p50 {m['p50_ms']:>8.2f}  "
                    f"p99 {m['p99_ms']:>8.2f} ms  err {m['errors']} {m['error_detail']}",
                    flush=True,
                )
        reps_done = rep + 1

    memory: dict[str, float] = {}
    if not args.no_memory:
        for proxy in [
            "wsgiproxy",
            "flask-urllib3",
            "werkzeug",
            "wsgiproxy2",
            "flask-requests",
            "wsgiproxy-gthread",
        ]:
            if (proxy, "http") in bench.inst:
                memory[proxy] = big_response_growth(bench, bench.inst[(proxy, "http")])
                print(f"  50 MB response through {proxy}: +{memory[proxy]:.1f} MB", flush=True)

    M = medians(runs)
    queue: dict[str, Any] = {}
    if queue_runs:
        queue["limit_rps"] = WORKERS * QUEUE_LIMIT / DELAY
        for proxy in ("wsgiproxy-q8", "flask-urllib3-q8", "direct"):
            rs = [r for r in queue_runs if r["proxy"] == proxy]
            if rs:
                q = {k: med([r[k] for r in rs]) for k in METRICS}
                q["errors_total"] = sum(r["errors"] for r in rs)
                kinds: dict[str, int] = {}
                for r in rs:
                    for kk, vv in r["error_detail"].items():
                        if vv:
                            kinds[kk] = kinds.get(kk, 0) + vv
                q["error_kinds"] = ", ".join(f"{k} {v}" for k, v in kinds.items()) or "none"
                queue[proxy] = q
    goals = evaluate_goals(M, queue, memory)
    elapsed = time.monotonic() - t_start
    vers = versions(bench)
    if bench.product_digest:
        vers["wsgiproxy snapshot"] = bench.product_digest
    if bench.x_digest:
        vers["wsgiproxy-x snapshot"] = f"{bench.x_digest} (from {bench.args.x_tree})"
    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "versions": vers,
        "versions_line": ", ".join(f"{k} {v}" for k, v in vers.items()),
        "run_line": (
            f"{'quick, ' if args.quick else ''}{reps_done} repetitions x {args.duration:g} s per cell "
            f"(warm-up {args.warmup:g} s in the first), queue runs {args.queue_duration:g} s; "
            f"{WORKERS} workers per WSGI proxy; took {elapsed / 60:.1f} min"
        ),
        "argv": sys.argv[1:],
    }
    text = report(meta, M, queue, memory, goals)
    (outdir / "report.md").write_text(text)
    (outdir / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "cell_order": [c.name for c in cells],
                "runs": runs,
                "queue_runs": queue_runs,
                "memory_mb": memory,
                "medians": M,
                "queue": queue,
                "goals": goals,
                "proxies": PROXIES,
            },
            indent=1,
        )
    )
    chart = subprocess.run(
        [
            str(bench.venv["tools"] / "python"),
            str(BENCH / "chart.py"),
            str(outdir / "results.json"),
            str(outdir / "chart.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if chart.returncode != 0:
        print(f"bench: chart failed: {chart.stderr[-1500:]}", file=sys.stderr)
    latest = RESULTS / ("latest-quick" if args.quick else "latest")
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(stamp)
    print()
    print(text)
    print(
        f"bench: wrote {outdir.relative_to(ROOT)}/report.md, results.json, chart.png in {elapsed / 60:.1f} min"
    )
    return 0


def big_response_growth(bench: Bench, inst: Instance, times: int = 3) -> float:
    """Largest peak-RSS growth (MB) of any worker while a 50 MB response passes through."""
    growth = 0.0
    for _ in range(times):
        pids = inst.worker_pids()
        before = {p: rss_bytes(p) for p in pids}
        peak = dict(before)
        done = threading.Event()

        def sample(done: threading.Event, pids: list[int], peak: dict[int, int]) -> None:
            while not done.is_set():
                for p in pids:
                    peak[p] = max(peak[p], rss_bytes(p))
                time.sleep(0.005)

        t = threading.Thread(target=sample, args=(done, pids, peak))
        t.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", inst.port, timeout=60)
            conn.request("GET", inst.prefix + "/50m.bin")
            resp = conn.getresponse()
            n = 0
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                n += len(chunk)
            conn.close()
            if resp.status != 200 or n != 50 << 20:
                print(
                    f"bench: 50 MB through {inst.proxy}: status {resp.status}, {n} bytes",
                    file=sys.stderr,
                )
        finally:
            done.set()
            t.join()
        growth = max(growth, max((peak[p] - before[p]) / 1e6 for p in pids))
    return growth


# -- profile -------------------------------------------------------------------------------
def run_profile(args: argparse.Namespace) -> int:
    """py-spy on both wsgiproxy workers while wrk drives 100 B at 64 connections."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + "-profile"
    outdir = RESULTS / stamp
    (outdir / "logs").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="wsgiproxy-bench-"))
    procs = Processes(outdir / "logs")
    atexit.register(procs.stop_all)
    atexit.register(shutil.rmtree, tmp, True)
    bench = Bench(args, procs, tmp, outdir)
    bench.x_env = dict(kv.split("=", 1) for kv in args.x_env.split(",") if kv) if args.x_env else {}
    try:
        ensure_system_tools()
        bench.venv["tools"] = ensure_venv("tools")
        bench.snapshot_product()
        bench.prepare_files()
        bench.start_upstreams()
        target = args.profile_proxy
        upstream = "https" if args.profile_cell.startswith("https") else "http"
        bench.start_proxy(target, upstream)
        bench.wait_ready()
        inst = bench.inst[(target, upstream)]
        path = "/100k.bin" if "100k" in args.profile_cell else "/100b.bin"
        abs_url = bench.upstream_url("http") + path if args.profile_cell == "forward" else None
        bench.measure(inst, path, 64, 2, abs_url=abs_url)  # warm
        workers = inst.worker_pids()
        pyspy = str(bench.venv["tools"] / "py-spy")
        spies = []
        for pid in workers:
            out = outdir / f"pyspy-{pid}.txt"
            spies.append(
                (
                    pid,
                    out,
                    procs.start(
                        f"py-spy-{pid}",
                        [
                            pyspy,
                            "record",
                            "--pid",
                            str(pid),
                            "--duration",
                            str(int(args.profile_seconds)),
                            "--rate",
                            "250",
                            "--format",
                            "raw",
                            "--nonblocking",
                            "-o",
                            str(out),
                        ],
                    ),
                )
            )
        time.sleep(1.0)
        m = bench.measure(inst, path, 64, int(args.profile_seconds) - 2, abs_url=abs_url)
        for _, _, proc in spies:
            proc.wait(timeout=args.profile_seconds + 30)
        stacks: dict[str, int] = {}
        for _, out, _ in spies:
            if out.exists():
                for line in out.read_text().splitlines():
                    stack, _, count = line.rpartition(" ")
                    if stack and count.isdigit():
                        stacks[stack] = stacks.get(stack, 0) + int(count)
        text = summarize_profile(stacks, m, target, args.profile_cell)
        text = text.replace(
            "\n\n",
            f"\n\nCode: wsgiproxy commit {bench.product_commit}, snapshot {bench.product_digest}.\n\n",
            1,
        )
        (outdir / "profile.md").write_text(text)
        latest = RESULTS / "latest-profile"
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(stamp)
        print(text)
        print(f"bench: wrote {outdir.relative_to(ROOT)}/profile.md and raw py-spy stacks")
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def _frame_key(frame: str) -> str:
    # py-spy raw frames: "function (path/file.py:line)"; group by function and file
    m = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{func} ({path.replace(str(ROOT) + '/', '')})"


def summarize_profile(stacks: dict[str, int], m: dict[str, Any], target: str, cell: str) -> str:
    total = sum(stacks.values()) or 1
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    area: dict[str, int] = {}
    for stack, n in stacks.items():
        frames = [f for f in stack.split(";") if f]
        # drop the "process"/"thread" pseudo frames py-spy adds
        frames = [f for f in frames if "(" in f]
        if not frames:
            continue
        keys = [_frame_key(f) for f in frames]
        self_t[keys[-1]] = self_t.get(keys[-1], 0) + n
        for k in set(keys):
            incl[k] = incl.get(k, 0) + n
        a = classify(keys)
        area[a] = area.get(a, 0) + n
    lines = [
        f"# Profile: {target}, {cell}, 64 connections (py-spy, both workers, 250 Hz, non-blocking)",
        "",
        f"Under the profiler: {m['rps']:,.0f} req/s, p99 {m['p99_ms']:.1f} ms, proxy CPU "
        f"{(m['cpu_proxy_s'] or 0) / max(1, m['requests']) * 1e6:.0f} µs per request; {total} samples (idle excluded).",
        "",
        "## Where the time goes (each sample charged to one area: the stale-connection check and metrics wherever they are on its stack, else the innermost)",
        "",
        "| area | share |",
        "|---|---|",
    ]
    for a, n in sorted(area.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {a} | {n / total * 100:.1f}% |")
    lines += [
        "",
        "## Top functions by own time",
        "",
        "| function | own | with callees |",
        "|---|---|---|",
    ]
    for k, n in sorted(self_t.items(), key=lambda kv: -kv[1])[:30]:
        lines.append(f"| `{k}` | {n / total * 100:.1f}% | {incl.get(k, 0) / total * 100:.1f}% |")
    lines += [
        "",
        "## Top functions with their callees",
        "",
        "| function | with callees |",
        "|---|---|",
    ]
    for k, n in sorted(incl.items(), key=lambda kv: -kv[1])[:40]:
        lines.append(f"| `{k}` | {n / total * 100:.1f}% |")
    return "\n".join(lines) + "\n"


AREAS = [
    ("wsgiproxy/pool.py", "wsgiproxy: pool"),
    ("wsgiproxy/response.py", "wsgiproxy: response head parsing"),
    ("wsgiproxy/upstream.py", "wsgiproxy: upstream client (send/finish)"),
    ("wsgiproxy/forwarding.py", "wsgiproxy: forwarding (headers, body relay)"),
    ("wsgiproxy/routing.py", "wsgiproxy: routing"),
    ("wsgiproxy/app.py", "wsgiproxy: dispatch"),
    ("urllib3/", "urllib3"),
    ("http/client.py", "http.client (request writing, getresponse)"),
    ("email/", "http.client header parsing (email.parser)"),
    ("gunicorn/", "gunicorn (request parsing, response writing)"),
    ("gevent/", "gevent (hub, sockets, greenlet switches)"),
    ("logging/", "logging"),
    ("ssl.py", "ssl"),
    ("socket.py", "socket"),
    ("wsgiproxy/", "wsgiproxy: other"),
    ("flask/", "flask"),
]


#: Charged to these whenever they are anywhere on the stack (what they call is theirs).
WHOLE_STACK = [
    ("urllib3/util/wait.py", "stale-connection check (urllib3 wait_for_read -> gevent poll)"),
    ("prometheus_client/", "prometheus_client (metrics)"),
]


def classify(keys: list[str]) -> str:
    for marker, name in WHOLE_STACK:
        if any(marker in k for k in keys):
            return name
    for k in reversed(keys):
        for marker, name in AREAS:
            if marker in k:
                return name
    return "other"


# -- main ----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="one short repetition (< 3 min)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3; quick 1)")
    ap.add_argument("--duration", type=int, help="seconds per measured run (default 3; quick 1)")
    ap.add_argument(
        "--warmup", type=int, help="seconds of warm-up per proxy and cell in the first repetition"
    )
    ap.add_argument(
        "--queue-duration",
        type=int,
        help="seconds of each queue-pressure run (default 10; quick 5)",
    )
    ap.add_argument(
        "--only",
        help=f"comma-separated proxies to run besides wsgiproxy ({', '.join(PROXIES)}; 'queue')",
    )
    ap.add_argument("--cells", help="comma-separated cell names, e.g. '100B c64,HTTPS 100B c64'")
    ap.add_argument(
        "--x-tree",
        help="run wsgiproxy-x from this tree's wsgiproxy/ (e.g. a git worktree of another commit)",
    )
    ap.add_argument(
        "--x-env",
        default="",
        help="K=V,... settings of the wsgiproxy-x experiment (name it in --only)",
    )
    ap.add_argument("--no-queue", action="store_true", help="skip the queue-pressure run")
    ap.add_argument("--no-memory", action="store_true", help="skip the 50 MB response check")
    ap.add_argument(
        "--budget",
        type=float,
        help="minutes after which no new repetition starts (default 17; quick 2.5)",
    )
    ap.add_argument(
        "--live-tree",
        action="store_true",
        help="run wsgiproxy from the work tree, not a snapshot of it",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="profile wsgiproxy's workers with py-spy under load instead",
    )
    ap.add_argument("--profile-proxy", default="wsgiproxy")
    ap.add_argument(
        "--profile-cell",
        default="100b",
        help="100b, 100k, https or forward (all at 64 connections)",
    )
    ap.add_argument("--profile-seconds", type=float, default=12)
    args = ap.parse_args()
    q = args.quick
    args.reps = args.reps or (1 if q else 3)
    args.duration = args.duration or (1 if q else 3)  # wrk takes whole seconds
    args.warmup = args.warmup if args.warmup is not None else (0 if q else 1)
    args.queue_duration = args.queue_duration or (5 if q else 10)
    args.budget = args.budget or (2.5 if q else 17.0)
    args.cells = [c.strip() for c in args.cells.split(",")] if args.cells else None

    if not (PRODUCT_BIN / "gunicorn").exists():
        raise SystemExit(
            "bench: .venv missing: run `make bench` (it creates .venv from requirements.txt)"
        )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 20000):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    # Whatever happens, the run ends: past this the finally blocks stop everything.
    hard_limit = int((args.budget + 8) * 60) if not args.profile else 600
    signal.signal(
        signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("bench: hard time limit"))
    )
    signal.alarm(hard_limit)
    if args.profile:
        return run_profile(args)
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
