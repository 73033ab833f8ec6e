"""The servers of a run: the upstreams, the nginx reverse proxy and every proxy of the
table (proxies.py), started once each and reached by port until the run ends."""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import provision
from constants import BENCH, DELAY, PRODUCT_BIN, RESULTS, ROOT, WORKERS
from processes import Processes, clean_env, descendants, free_port, http_get, stat
from proxies import SPECS, Proxy


@dataclass
class Instance:
    """One running proxy (or upstream) to measure: where to send requests, whose CPU."""

    proxy: str
    upstream: str
    port: int
    root_pid: int | None  # the pid we started (master); None for "direct"
    root_is_worker: bool = False  # the proxy's RSS: root_pid's too, not only its children's
    https: bool = False
    prefix: str = ""  # path prefix the proxy serves the upstream under (werkzeug: /up)

    def worker_pids(self) -> list[int]:
        """The processes whose RSS is "the proxy's RSS"."""
        if self.root_pid is None:
            return []
        if self.root_is_worker:
            return [self.root_pid] + descendants(self.root_pid)
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
    #: instances that exited at start and may (proxies.Proxy.may_fail_to_start): why
    not_started: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def for_run(cls, args: argparse.Namespace, kind: str = "") -> Bench:
        """A run's bench: its results folder (``bench/results/<date><kind>/``, with the
        servers' ``logs/``), a temporary folder and its processes, the last two gone at
        exit however the run ends."""
        outdir = RESULTS / (datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + kind)
        (outdir / "logs").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="wsgiproxy-bench-"))
        procs = Processes(outdir / "logs")
        atexit.register(procs.stop_all)
        atexit.register(shutil.rmtree, tmp, True)
        return cls(args, procs, tmp, outdir)

    # ---- files, certificates, the code measured ----
    def prepare_files(self) -> None:
        self.ca_file = provision.prepare_files(self.tmp)
        self.client_ctx = ssl.create_default_context(cafile=self.ca_file)

    def snapshot_product(self) -> None:
        """Copy wsgiproxy/ and gunicorn.conf.py as they are now, and run every wsgiproxy
        instance from the copy: others edit the work tree while a run goes on, and all
        instances must run one and the same code (--live-tree runs the tree itself)."""
        if getattr(self.args, "x_tree", None):
            # wsgiproxy-x runs another version of the code (e.g. a `git worktree` of the
            # commit before a change), so that a change is measured beside its "before".
            self.x_dir = self.tmp / "product-x"
            self.x_digest = provision.copy_product(Path(self.args.x_tree).resolve(), self.x_dir)
        if self.args.live_tree:
            self.product_dir = ROOT
            return
        snap = self.tmp / "product"
        self.product_digest = provision.copy_product(ROOT, snap)
        self.product_commit = provision.product_commit()
        self.product_dir = snap

    # ---- upstreams ----
    def _nginx(self, name: str, conf: str) -> subprocess.Popen[bytes]:
        path = self.tmp / f"{name}.conf"
        path.write_text(conf)
        return self.procs.start(
            name,
            [
                provision.nginx_binary(),
                "-p",
                str(self.tmp),
                "-c",
                str(path),
                "-e",
                str(self.tmp / f"{name}-error.log"),
            ],
            stop_signal=signal.SIGTERM,
        )

    def start_upstreams(self) -> None:
        p = self.ports
        for k in ("up_http", "up_http_b", "up_http_c", "up_https", "up_stub", "up_delay"):
            p[k] = free_port()
        up = self._nginx(
            "nginx-upstream", provision.upstream_nginx_conf(self.tmp, "nginx-upstream", p)
        )
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

    def group_urls(self) -> str:
        """The three healthy servers of the "group3" cell, as PROXY_UPSTREAM lists them."""
        return " ".join(
            f"http://127.0.0.1:{self.ports[k]}" for k in ("up_http", "up_http_b", "up_http_c")
        )

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
    def start_nginx_proxy(self) -> None:
        p = self.ports
        for u in ("http", "delay", "https"):
            p[f"nginx_{u}"] = free_port()
        conf = provision.proxy_nginx_conf(self.tmp, "nginx-proxy", p, self.ca_file)
        proc = self._nginx("nginx-proxy", conf)
        self.upstream_root["nginx-proxy"] = proc.pid

    def start_proxy(self, proxy: str, upstream: str) -> None:
        """An instance of the table's ``proxy`` in front of ``upstream``."""
        spec = SPECS.get(proxy)
        if spec is None:
            raise ValueError(proxy)
        key = (proxy, upstream)
        if spec.kind == "direct":
            port = self.ports["up_" + upstream]
            self.inst[key] = Instance(proxy, upstream, port, None, https=upstream == "https")
            return
        if spec.kind == "nginx":
            self.inst[key] = Instance(
                proxy, upstream, self.ports[f"nginx_{upstream}"], self.upstream_root["nginx-proxy"]
            )
            return
        start = {
            "wsgiproxy": self.start_wsgiproxy,
            "gunicorn": self.start_gunicorn_app,
            "proxypy": self.start_proxypy,
        }[spec.kind]
        port = free_port()
        proc = start(spec, f"{proxy}-{upstream}", upstream, port)
        self.inst[key] = Instance(
            proxy,
            upstream,
            port,
            proc.pid,
            root_is_worker=spec.root_is_worker,
            prefix=spec.prefix,
        )

    def restart_wsgiproxies(self) -> None:
        """Every wsgiproxy instance (wsgiproxy-x too) stopped and started anew, then ready:
        each repetition of a paired run then measures new processes, whose luck (hash
        seed, memory layout) averages out over repetitions instead of staying with a slot
        for the whole run."""
        keys = [k for k, inst in self.inst.items() if SPECS[k[0]].kind == "wsgiproxy"]
        for key in keys:
            proc = self.procs.by_pid(self.inst[key].root_pid)
            if proc is not None:
                self.procs.stop_one(proc)
                self.procs.forget(proc)
            self.start_proxy(*key)
        self.wait_ready()

    def _bin(self, spec: Proxy) -> Path:
        return self.venv[spec.venv] if spec.venv else PRODUCT_BIN

    def start_wsgiproxy(
        self,
        spec: Proxy,
        name: str,
        upstream: str,
        port: int,
        upstream_urls: str | None = None,
        extra: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """An instance of ours; ``wrapper`` runs its interpreter (valgrind, for one)."""
        settings = {
            "PROXY_BIND": f"127.0.0.1:{port}",
            "PROXY_WORKERS": str(WORKERS),
            "PROXY_WORKER_CLASS": "gevent",
            "PROXY_ACCESS_LOG": "",
        }
        if upstream_urls is None:
            upstream_urls = self.group_urls() if spec.group else self.upstream_url(upstream)
        settings["PROXY_UPSTREAM"] = upstream_urls
        settings.update(extra or {})
        if upstream == "https":
            settings["HTTP_CA_BUNDLE"] = self.ca_file
        settings.update(spec.env)
        if spec.experiment:
            settings.update(self.x_env)
        bin_dir = self._bin(spec)
        launcher = [*wrapper, str(bin_dir / "python")] if wrapper else []
        argv = [
            *launcher,
            str(bin_dir / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            "--no-control-socket",
        ]
        # A bench-side wrapper of the app (bench/*_app.py) is found on bench/'s path.
        argv += ["--pythonpath", str(BENCH), spec.module] if spec.module else ["wsgiproxy.app:app"]
        cwd = (self.x_dir if spec.experiment else None) or self.product_dir
        return self.procs.start(name, argv, env=clean_env(**settings), cwd=cwd)

    def start_gunicorn_app(
        self, spec: Proxy, name: str, upstream: str, port: int
    ) -> subprocess.Popen[bytes]:
        env = dict(spec.env)
        if spec.upstream_var:
            env[spec.upstream_var] = self.upstream_url(upstream)
        if spec.ca_var and upstream == "https":
            env[spec.ca_var] = self.ca_file
        argv = [
            str(self._bin(spec) / "gunicorn"),
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
            spec.module,
        ]
        return self.procs.start(name, argv, env=clean_env(**env), cwd=BENCH)

    def start_proxypy(
        self, spec: Proxy, name: str, upstream: str, port: int
    ) -> subprocess.Popen[bytes]:
        argv = [
            str(self._bin(spec) / "proxy"),
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
        ]
        return self.procs.start(name, argv, env=clean_env(), cwd=self.tmp)

    # ---- readiness ----
    def wait_ready(self, deadline_s: float = 90.0) -> None:
        """Every instance answers 200 through the whole chain, or the run stops."""
        pending = dict(self.inst)
        deadline = time.monotonic() + deadline_s
        last_err: dict[tuple[str, str], str] = {}
        while pending and time.monotonic() < deadline:
            for key, inst in list(pending.items()):
                st = stat(inst.root_pid) if inst.root_pid is not None else ["R"]
                if st is None or st[0] == "Z":  # gone, or exited and not yet reaped
                    log = f"{self.procs.logdir}/{key[0]}-{key[1]}.log"
                    if SPECS[key[0]].may_fail_to_start:
                        # e.g. a settings the tree does not support yet: reported, not fatal
                        print(f"bench: {key[0]} ({key[1]}) did not start; see {log}", flush=True)
                        self.not_started[key] = "did not start"
                        del pending[key]
                        del self.inst[key]
                        continue
                    raise SystemExit(f"bench: {key[0]} ({key[1]}) exited at start; see {log}")
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

    def upstream_handled(self) -> int:
        """Requests the upstream nginx has handled so far (its stub_status)."""
        _, body = http_get("127.0.0.1", self.ports["up_stub"], "/")
        m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)", body)
        return int(m.group(3)) if m else 0

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
                now = self.upstream_handled()
            if now - last <= 1:  # only our own stats request since the last look
                return
            last = now
            time.sleep(0.3)
