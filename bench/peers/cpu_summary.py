#!/usr/bin/env python3
"""Summarises several `opencluster bench --json` runs on one CPU as Markdown.

Usage: cpu_summary.py RUN1.jsonl RUN2.jsonl RUN3.jsonl [> SUMMARY.md]

For every row that appears in the runs (matched by name and size) it prints
min / median / max of our figure, the peer's and the same-run ratio ours/peer
(each ratio comes from one run, never from figures of different runs), the
kernels, and the machine's load average at the start and end of each run;
then issue 11's targets (TARGETS below), each as the median over the runs
with min - max and in how many runs it held. Needs only the Python standard
library.
"""
import json
import statistics
import sys


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def figure(r):
    """Our figure of a row and its unit."""
    e = r.get("extra", {})
    if r["name"] == "train_step":
        return e.get("tokens_per_s"), "tokens/s"
    if r["name"] == "pretrain_save":
        return e.get("final_write_s"), "s"
    if r["name"] == "train_step_peak_rss":
        return e.get("mib"), "MiB"
    if r.get("gflops"):
        return r["gflops"], "GFLOPS"
    if r.get("gbps"):
        return r["gbps"], "GB/s"
    return None, ""


def row_size(r):
    """The row's size without a figure in it: train_step_peak_rss puts its
    MiB into the size for the table ("small/qlora 771 MiB")."""
    size = r.get("size", "")
    if r["name"] == "train_step_peak_rss":
        return size.split(" ")[0]
    return size


# The targets of issue 11 ("CPU engine speed"): row name, size, what is
# compared, the bound, and whether the figure must be at least (">=") or at
# most ("<=") it.
TARGETS = [
    ("fp32_gemm", "1024x1024x1024", "ratio", ">=", 0.9, "fp32 sgemm >= 0.9x OpenBLAS at 1024^3, same run"),
    ("fp32_gemm", "2048x2048x2048", "ratio", ">=", 0.9, "fp32 sgemm >= 0.9x OpenBLAS at 2048^3, same run"),
    ("train_step", "small/qlora", "ratio", ">=", 2.0, "QLoRA step (small) >= 2x PyTorch's fp32 LoRA step, same run"),
    ("train_step", "tiny/qlora", "ratio", ">=", 2.0, "QLoRA step (tiny) >= 2x PyTorch's fp32 LoRA step, same run"),
    ("nf4_matmul", None, "ratio", ">=", 1.0, "fused NF4 matmul >= 1x OpenBLAS fp32 GEMM of the same shape, same run"),
    ("pretrain_save", None, "final_write_s", "<=", 2.0, "pretrain's end-of-run save (the write itself) <= 2 s, 113M model"),
    ("pretrain_save", None, "final_save_s", "<=", 2.0, "pretrain's end-of-run wait for that save after the final evaluation <= 2 s"),
    ("pretrain_save", None, "peak_rss_over_sum", "<=", 1.3, "pretrain peak RSS <= 1.3x weights + grads + AdamW moments + activations"),
]


def target_value(r, field):
    if field == "ratio":
        return r.get("ratio")
    return r.get("extra", {}).get(field)


def print_targets(keys, rows):
    print()
    print("| target | median (min - max) | met in | each run, in order |")
    print("|---|---|---|---|")
    for name, size, field, op, bound, text in TARGETS:
        k = next((k for k in keys if k[0] == name and (size is None or k[1] == size)), None)
        vals = [] if k is None else [v for v in (target_value(r, field) for r in rows[k]) if v is not None]
        if not vals:
            print(f"| {text} | not measured | - | - |")
            continue
        met = sum(1 for v in vals if (v >= bound if op == ">=" else v <= bound))
        fmt = "{:.2f}x" if field in ("ratio", "peak_rss_over_sum") else "{:.2f} s"
        med = statistics.median(vals)
        verdict = "met" if (med >= bound if op == ">=" else med <= bound) else "NOT met"
        print(f"| {text} | {fmt.format(med)} ({fmt.format(min(vals))} - {fmt.format(max(vals))}): {verdict} at the median "
              f"| {met} of {len(vals)} runs | {' / '.join(fmt.format(v) for v in vals)} |")


def peer_figure(r):
    e = r.get("extra", {})
    if r["name"] == "train_step":
        return e.get("peer_tokens_per_s")
    return r.get("peer_gflops")


def mmm(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return " / ".join(fmt.format(v) for v in (min(xs), statistics.median(xs), max(xs)))


def main(paths):
    runs = [load(p) for p in paths]
    keys = []
    rows = {}
    for run in runs:
        for r in run:
            if r["name"] in ("machine", "peer", "peak_rss"):
                continue
            k = (r["name"], row_size(r))
            if k not in rows:
                keys.append(k)
                rows[k] = []
            rows[k].append(r)
    print(f"{len(runs)} runs: " + ", ".join(paths))
    print()
    for i, run in enumerate(runs):
        m = next((r for r in run if r["name"] == "machine"), {})
        p = next((r for r in run if r["name"] == "peer"), {})
        end = next((r for r in run if r["name"] == "peak_rss"), {})
        me, pe = m.get("extra", {}), p.get("extra", {})
        print(f"- run {i + 1}: {me.get('cpu_model', '?')}, {me.get('cores', '?')} cores, load average "
              f"{me.get('loadavg_start', '?')} at the start, {end.get('extra', {}).get('loadavg_end', '?')} at the end; "
              f"peer {p.get('peer', 'none')} running {p.get('peer_kernel', '?')} "
              f"({pe.get('note', '')})")
    print()
    print("| row | size | kernel ours / peer | ours, min / median / max | peer, min / median / max | ours/peer (same run), min / median / max |")
    print("|---|---|---|---|---|---|")
    for k in keys:
        rs = rows[k]
        unit = figure(rs[0])[1]
        ours = [figure(r)[0] for r in rs]
        peers = [peer_figure(r) for r in rs]
        ratios = [r.get("ratio") for r in rs]
        kern = rs[0].get("kernel", "-") + " / " + (rs[0].get("peer_kernel") or "-")
        fmt = "{:.0f}" if unit in ("tokens/s", "GFLOPS", "MiB") else "{:.2f}"
        errs = sorted({r["error"] for r in rs if r.get("error")})
        cell = mmm(ours, fmt) + (" " + unit if any(o is not None for o in ours) else "")
        if errs:
            cell += " (error: " + "; ".join(errs) + ")"
        print(f"| {k[0]} | {k[1]} | {kern} | {cell} | {mmm(peers, fmt)} | {mmm(ratios, '{:.2f}x')} |")
    extras = [r for r in rows.get(next((k for k in keys if k[0] == "pretrain_save"), ("", "")), [])]
    if extras:
        print()
        print("pretrain_save, per run: " + "; ".join(
            "final_write_s {:.2f}, final_save_s {:.3f}, peak RSS {:.0f} MiB = {:.2f}x ({:.0f} weights + {:.0f} grads + "
            "{:.0f} AdamW moments + {:.0f} activations = {:.0f} MiB)".format(
                e["final_write_s"], e["final_save_s"], e["peak_rss_mib"], e["peak_rss_over_sum"], e["weights_mib"],
                e["grads_mib"], e["adamw_moments_mib"], e["activations_mib"], e["sum_mib"])
            for e in (r.get("extra", {}) for r in extras) if "final_write_s" in e))
    print_targets(keys, rows)
    warnings = sorted({f"{r['name']} {r.get('size', '')}: {r['warning']}" for k in keys for r in rows[k] if r.get("warning")})
    if warnings:
        print()
        print("Warnings the runs printed:")
        for w in warnings:
            print("- " + w)
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
