"""The PNG chart of a bench run: req/s and p99 per proxy and cell (medians).

Runs from bench/.venv-tools (matplotlib is not a product dependency):

    bench/.venv-tools/bin/python bench/chart.py bench/results/<run>/results.json out.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "wsgiproxy": "#d62728",
    "wsgiproxy-nopool": "#ff9896",
    "wsgiproxy-gthread": "#e377c2",
    "flask-requests": "#8c564b",
    "flask-urllib3": "#1f77b4",
    "werkzeug": "#aec7e8",
    "wsgiproxy2": "#9467bd",
    "nginx": "#2ca02c",
    "direct": "#7f7f7f",
    "bare": "#bcbd22",
    "proxypy": "#17becf",
}


def main(src: str, dst: str) -> None:
    with open(src) as f:
        data = json.load(f)
    M = data["medians"]
    cells = [c for c in data.get("cell_order") or M.keys()]
    proxies = [p for p in data["proxies"] if any(p in M[c] for c in cells)]
    fig, axes = plt.subplots(2, 1, figsize=(max(12, 1.6 * len(cells)), 10), sharex=True)
    width = 0.85 / max(1, len(proxies))
    for metric, ax, label in (
        ("rps", axes[0], "req/s (median, log scale)"),
        ("p99_ms", axes[1], "p99 latency, ms (median, log scale)"),
    ):
        for i, proxy in enumerate(proxies):
            xs, ys = [], []
            for j, cell in enumerate(cells):
                m = M[cell].get(proxy)
                if m and m.get(metric):
                    xs.append(j + (i - (len(proxies) - 1) / 2) * width)
                    ys.append(m[metric])
            ax.bar(
                xs,
                ys,
                width,
                label=proxy,
                color=COLORS.get(proxy),
                edgecolor="black" if proxy == "wsgiproxy" else None,
                linewidth=1.2,
            )
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[1].set_xticks(range(len(cells)))
    axes[1].set_xticklabels(cells, rotation=20, ha="right")
    axes[0].legend(ncol=min(6, len(proxies)), fontsize=8, loc="upper right")
    meta = data["meta"]
    fig.suptitle(f"wsgiproxy bench {meta['date']} — {meta['machine']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
