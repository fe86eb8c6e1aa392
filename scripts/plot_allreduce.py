#!/usr/bin/env python3
"""Plots bench_allreduce --json output: time per call and bus bandwidth against message size,
one row per data type, one line per path.

    python3 scripts/plot_allreduce.py bench.json out.png   (or out.svg)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    with open(src) as f:
        doc = json.load(f)
    rows = doc["results"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    paths = list(dict.fromkeys(r["path"] for r in rows))
    fig, axes = plt.subplots(len(dtypes), 2, figsize=(12, 4 * len(dtypes)), squeeze=False)
    for i, dt in enumerate(dtypes):
        for p in paths:
            pts = sorted((r["bytes"], r["time_us"], r["busbw_gbs"], r.get("graph_us")) for r in rows
                         if r["dtype"] == dt and r["path"] == p)
            if not pts:
                continue
            x = [q[0] for q in pts]
            axes[i][0].plot(x, [q[1] for q in pts], marker=".", label=p)
            g = [(q[0], q[3]) for q in pts if q[3] is not None]
            if g and p != "nccl":
                axes[i][0].plot([q[0] for q in g], [q[1] for q in g], linestyle=":", label=p + " (graph)")
            axes[i][1].plot(x, [q[2] for q in pts], marker=".", label=p)
        axes[i][0].set(xscale="log", yscale="log", xlabel="message size (bytes)", ylabel="time per call (us)",
                       title=f"{dt}: time")
        axes[i][1].set(xscale="log", xlabel="message size (bytes)", ylabel="busbw (GB/s)", title=f"{dt}: bus bandwidth")
        for ax in axes[i]:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    m = doc.get("machine", {})
    fig.suptitle(f"all-reduce, world {doc.get('world')}: {m.get('gpus')} x {m.get('gpu')}, NCCL {m.get('nccl')}")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
