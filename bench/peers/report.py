#!/usr/bin/env python3
"""Writes bench/results/<gpu>-<date>.md from one bench/gpu-check.sh run.

Inputs: our rows (`opencluster-cuda bench --json`, one or more files), the
PyTorch peers' rows (torch_peers.py), the step status file (name<TAB>exit
code<TAB>seconds per line) and the raw log. Output: a table of the issue's
targets as ratios, each PASS, FAIL or MISSING (a row that was not measured
is never a pass), the step statuses, every row, and the raw log.

Needs only the Python standard library (the report is tested without a GPU:
bench/gpu_report_test.go feeds it canned rows).
"""
import argparse
import json
import os
import sys
import tempfile

GIB = 1 << 30


def load_rows(paths):
    rows, bad = [], []
    for p in paths:
        if not p or not os.path.exists(p):
            bad.append(f"{p}: missing")
            continue
        with open(p, errors="replace") as f:
            for i, line in enumerate(f, 1):
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    r = json.loads(line)
                except ValueError as e:
                    bad.append(f"{p}:{i}: not JSON ({e})")
                    continue
                if isinstance(r, dict) and isinstance(r.get("name"), str):
                    rows.append(r)
                else:
                    bad.append(f"{p}:{i}: not a bench row")
    return rows, bad


def find(rows, name, size=None):
    """The last good row with this name (and size); None when absent or failed."""
    hit = None
    for r in rows:
        if r.get("name") == name and (size is None or r.get("size") == size) and not r.get("error"):
            hit = r
    return hit


def extra(r, key):
    if r is None:
        return None
    v = (r.get("extra") or {}).get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def num(r, key):
    if r is None:
        return None
    v = r.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class Check:
    def __init__(self, what, ours, peer, value, target, op, unit=""):
        self.what, self.ours, self.peer, self.value, self.target, self.op, self.unit = what, ours, peer, value, target, op, unit

    @property
    def result(self):
        if self.value is None:
            return "MISSING"
        ok = self.value >= self.target if self.op == ">=" else self.value <= self.target
        return "PASS" if ok else "FAIL"


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


SQUARE = "4096x4096x4096"
TRAINING_SHAPES = ["512x8192x2048", "512x2048x8192", "512x11008x4096"]


def checks(ours, peers):
    out = []
    for dt, target in (("bf16", 0.6), ("fp32", 0.8)):
        o, p = num(find(ours, "gpu_gemm_" + dt, SQUARE), "gflops"), num(find(peers, "torch_gemm_" + dt, SQUARE), "gflops")
        out.append(Check(f"{dt} GEMM {SQUARE} vs cuBLAS", fmt(o and o / 1000, "{:.1f} TFLOPS"),
                         fmt(p and p / 1000, "{:.1f} TFLOPS"), ratio(o, p), target, ">=", "x"))
    dq = find(ours, "gpu_nf4_dequantize")
    cp = find(ours, "gpu_copy")
    out.append(Check("NF4 dequantize vs our copy bandwidth", fmt(num(dq, "gbps"), "{:.0f} GB/s"),
                     fmt(num(cp, "gbps"), "{:.0f} GB/s (copy)"), ratio(num(dq, "gbps"), num(cp, "gbps")), 0.75, ">="))
    for shape in TRAINING_SHAPES:
        o, p = num(find(ours, "gpu_nf4_matmul", shape), "gflops"), num(find(peers, "torch_nf4_dequant_matmul", shape), "gflops")
        if o is None and p is None:
            continue
        out.append(Check(f"fused NF4 matmul {shape} vs torch dequantize + bf16 matmul", fmt(o and o / 1000, "{:.1f} TFLOPS"),
                         fmt(p and p / 1000, "{:.1f} TFLOPS"), ratio(o, p), 0.8, ">=", "x"))
    presets = []
    for r in ours + peers:
        if r.get("name") in ("gpu_qlora_step", "torch_lora_step") and r.get("size") and r["size"] not in presets:
            presets.append(r["size"])
    for preset in presets:
        o, p = find(ours, "gpu_qlora_step", preset), find(peers, "torch_lora_step", preset)
        if p is not None or preset != "llama-7b":
            ot, pt = extra(o, "tokens_per_s"), extra(p, "tokens_per_s")
            out.append(Check(f"QLoRA step {preset} tokens/s vs PyTorch bf16 LoRA", fmt(ot, "{:.0f} tok/s"),
                             fmt(pt, "{:.0f} tok/s"), ratio(ot, pt), 0.8, ">="))
            om, pm = extra(o, "peak_bytes"), extra(p, "peak_bytes")
            out.append(Check(f"QLoRA step {preset} peak memory vs PyTorch", fmt(om and om / GIB, "{:.2f} GiB"),
                             fmt(pm and pm / GIB, "{:.2f} GiB"), ratio(om, pm), 0.5, "<="))
    for preset, limit in (("llama-7b", 6), ("llama-1b", 2)):
        om = extra(find(ours, "gpu_qlora_step", preset), "peak_bytes")
        out.append(Check(f"{preset} QLoRA r=16 seq 512 peak device memory", fmt(om and om / GIB, "{:.2f} GiB"), "-",
                         om / GIB if om is not None else None, limit, "<=", " GiB"))
    return out


def render(gpu, date, ours, peers, bad, steps, log):
    cs = checks(ours, peers)
    lines = [f"# GPU bench: {gpu}, {date}", "",
             "Produced by `bash bench/gpu-check.sh` from a bundle made by `scripts/build-gpu-bundle.sh`;",
             "ours and the PyTorch peers were measured in the same run on the same GPU.", ""]
    dev = find(ours, "gpu")
    if dev:
        e = dev.get("extra") or {}
        lines += [f"Card: {e.get('name', '?')}, sm {e.get('compute_capability', '?')}, {e.get('sms', '?')} SMs, "
                  f"max clock {e.get('max_sm_clock_mhz', '?')} MHz, peak bf16 {fmt(e.get('peak_tflops_bf16'), '{:.0f}')} TFLOPS, "
                  f"peak memory bandwidth {fmt(e.get('peak_gbps'), '{:.0f}')} GB/s.", ""]
    torch_row = find(peers, "torch")
    if torch_row:
        e = torch_row.get("extra") or {}
        lines += [f"Peer: torch {e.get('torch', '?')} (CUDA {e.get('cuda', '?')}) on {e.get('device', '?')}.", ""]
    passed = sum(c.result == "PASS" for c in cs)
    lines += ["## Targets (issue 5)", "", f"{passed} of {len(cs)} targets pass.", "",
              "| target | ours | peer | ratio | wanted | result |", "|---|---|---|---|---|---|"]
    for c in cs:
        unit = c.unit or "x"
        lines.append(f"| {c.what} | {c.ours} | {c.peer} | {fmt(c.value)}{'' if c.value is None else unit} | "
                     f"{c.op} {c.target}{unit} | {c.result} |")
    lines += ["", "## Steps", "", "| step | exit code | seconds | result |", "|---|---|---|---|"]
    for name, code, secs in steps:
        res = "PASS" if code == "0" else ("SKIPPED" if code == "skip" else "FAIL")
        lines.append(f"| {name} | {code} | {secs} | {res} |")
    lines += ["", "## Rows", "", "| row | size | GFLOPS | GB/s | % of peak | error |", "|---|---|---|---|---|---|"]
    for r in ours + peers:
        if r.get("name") in ("gpu", "torch"):
            continue
        fp = num(r, "fraction_of_peak")
        lines.append(f"| {r.get('name')} | {r.get('size', '')} | {fmt(num(r, 'gflops'), '{:.0f}')} | "
                     f"{fmt(num(r, 'gbps'), '{:.0f}')} | {fmt(fp and 100 * fp, '{:.0f}%')} | {r.get('error', '')} |")
    if bad:
        lines += ["", "Unreadable input:", ""] + [f"- {b}" for b in bad]
    lines += ["", "## Raw log", "", "```", log.rstrip("\n").replace("```", "'''"), "```", ""]
    return "\n".join(lines), cs


def read_steps(path):
    out = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 3:
                    out.append(tuple(parts))
    return out


def write_atomic(path, text):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".report-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--ours", nargs="+", default=[])
    ap.add_argument("--qlora-only", nargs="+", default=[],
                    help="more of our row files, of which only the gpu_qlora_step rows are used (the llama-7b run)")
    ap.add_argument("--peers", nargs="+", default=[])
    ap.add_argument("--steps", default="")
    ap.add_argument("--log", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    ours, bad1 = load_rows(a.ours)
    extra_rows, bad3 = load_rows(a.qlora_only)
    ours += [r for r in extra_rows if r.get("name") == "gpu_qlora_step"]
    peers, bad2 = load_rows(a.peers)
    log = ""
    if a.log and os.path.exists(a.log):
        with open(a.log, errors="replace") as f:
            log = f.read()
    text, cs = render(a.gpu, a.date, ours, peers, bad1 + bad3 + bad2, read_steps(a.steps), log)
    write_atomic(a.out, text)
    for c in cs:
        print(f"{c.result:8} {c.what}: {fmt(c.value)} (want {c.op} {c.target})")
    print("report:", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
