"""`run.py --profile`: py-spy on wsgiproxy's workers under load, and its summary."""

from __future__ import annotations

import argparse
import re
import shutil
import time
from typing import Any

from constants import RESULTS, ROOT
from measure import measure
from provision import ensure_system_tools, ensure_venv
from servers import Bench


def run_profile(args: argparse.Namespace, x_env: dict[str, str]) -> int:
    """py-spy on both wsgiproxy workers while wrk drives 100 B at 64 connections."""
    bench = Bench.for_run(args, "-profile")
    outdir, tmp, procs, stamp = bench.outdir, bench.tmp, bench.procs, bench.outdir.name
    bench.x_env = x_env
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
        measure(bench, inst, path, 64, 2, abs_url=abs_url)  # warm
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
        m = measure(bench, inst, path, 64, int(args.profile_seconds) - 2, abs_url=abs_url)
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
    ("wsgiproxy/client/pool.py", "wsgiproxy: pool"),
    ("wsgiproxy/client/http1.py", "wsgiproxy: HTTP/1 head writing and parsing"),
    ("wsgiproxy/client/", "wsgiproxy: upstream client (send/finish)"),
    ("wsgiproxy/proxy/handler.py", "wsgiproxy: handler (body relay)"),
    ("wsgiproxy/proxy/headers.py", "wsgiproxy: header rules"),
    ("wsgiproxy/proxy/routing.py", "wsgiproxy: routing"),
    ("wsgiproxy/proxy/dispatch.py", "wsgiproxy: dispatch"),
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
