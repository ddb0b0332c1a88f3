#!/usr/bin/env python3
"""PyTorch peers for the bench, measured in the same run as ours.

Prints one JSON object per line in the row format of `opencluster bench
--json` (name, size, gflops, gbps, extra). Needs only torch (no
bitsandbytes): NF4 dequantization is written here in plain torch with the
same code table, block size and nibble order as quant/ (bitsandbytes' NF4,
block 64, fp32 absmax, first element in the high nibble).

GPU rows (--device cuda, the default; bench/gpu-check.sh):
  torch_gemm_<dtype>        torch.matmul (cuBLAS) in fp32 (tf32 off), tf32, bf16, fp16
  torch_copy                dst.copy_(src) of 1 GiB; gbps counts bytes read + written
  torch_nf4_dequantize      NF4 -> bf16 in plain torch; gbps counts packed + absmax read + bf16 written
  torch_nf4_dequant_matmul  dequantize W then x @ W.T in bf16; gflops = 2mnk / (both)
  torch_lora_step           bf16 Llama block stack, LoRA r=16 on every linear, AdamW on the
                            adapters; extra.tokens_per_s and extra.peak_bytes
                            (torch.cuda.max_memory_allocated)

CPU rows (--device cpu; `opencluster bench` runs it for its QLoRA rows, with
OPENBLAS_CORETYPE set to the same OpenBLAS kernels as its sgemm peer):
  torch_cpu_lora_step       the same Llama block stack in fp32 (the frozen base fp32
                            too: torch has no NF4 on the CPU), LoRA on the given
                            linears, AdamW on the adapters, --threads threads;
                            extra.tokens_per_s (median step after a warm-up step)
  torch_cpu_gemm            torch.matmul fp32 at 1024 and 2048 (--only gemm)

Usage: torch_peers.py [--device cuda|cpu] [--quick] [--configs DIR] [--presets gpt2-124m,llama-1b]
                      [--shape JSON] [--threads N] [--only gemm,copy,nf4,lora]
"""
import argparse
import json
import math
import os
import sys
import time

import torch

# Where the peers run, and the dtype of the LoRA step's frozen base and
# activations: cuda in bf16 (the GPU bench), or cpu in fp32.
DEVICE = "cuda"
DTYPE = torch.bfloat16

# Keep in step with bench.GPUGEMMShapes.
SHAPES = [("square", 4096, 4096, 4096), ("llama-1b mlp up", 512, 8192, 2048),
          ("llama-1b mlp down", 512, 2048, 8192), ("llama-7b mlp up", 512, 11008, 4096)]

# bitsandbytes' NF4 code values (quant/codes.go), index = 4-bit code.
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def row(name, size="", **kw):
    r = {"name": name}
    if size:
        r["size"] = size
    extra = kw.pop("extra", None)
    r.update({k: v for k, v in kw.items() if v})
    if extra:
        r["extra"] = extra
    print(json.dumps(r), flush=True)


def timed(fn, iters):
    """Seconds per call after one warm-up: CUDA events over iters calls on
    the GPU; on the CPU each call timed alone and the median taken."""
    if DEVICE == "cpu":
        fn()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / iters


def bench_gemm(quick):
    dtypes = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    shapes = SHAPES[:1] if quick else SHAPES
    for sname, m, n, k in shapes:
        for dt, tdt in dtypes.items():
            torch.backends.cuda.matmul.allow_tf32 = dt == "tf32"
            a = torch.randn(m, k, device="cuda", dtype=tdt)
            b = torch.randn(k, n, device="cuda", dtype=tdt)
            s = timed(lambda: torch.matmul(a, b), 5 if quick else 20)
            tf = 2 * m * n * k / s / 1e12
            row("torch_gemm_" + dt, f"{m}x{n}x{k}", gflops=1000 * tf,
                extra={"dtype": dt, "shape": sname, "tflops": tf, "peer": "torch.matmul (cuBLAS) " + torch.__version__})
            del a, b
    torch.backends.cuda.matmul.allow_tf32 = False


def bench_copy(quick):
    nbytes = (256 << 20) if quick else (1 << 30)
    src = torch.empty(nbytes // 4, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    s = timed(lambda: dst.copy_(src), 5 if quick else 20)
    row("torch_copy", f"{nbytes >> 20} MiB", gbps=2 * nbytes / s / 1e9, extra={"counts": "read + write"})
    return 2 * nbytes / s / 1e9


def nf4_quantize(w, block=64, chunk=1 << 22):
    """Plain-torch NF4 quantization: codes packed two per byte, high nibble
    first, nearest code (in chunks, so an 8 GB card has room)."""
    flat = w.float().reshape(-1, block)
    absmax = flat.abs().amax(dim=1).clamp_min(1e-12)
    table = torch.tensor(NF4, device=w.device)
    rows = max(1, chunk // block)
    idx = torch.empty(flat.numel(), dtype=torch.uint8, device=w.device)
    for i in range(0, flat.shape[0], rows):
        part = flat[i:i + rows] / absmax[i:i + rows, None]
        idx[i * block:(i + part.shape[0]) * block] = (part.unsqueeze(-1) - table).abs().argmin(dim=-1).reshape(-1).to(torch.uint8)
    packed = (idx[0::2] << 4) | idx[1::2]
    return packed, absmax


def nf4_dequantize(packed, absmax, shape, table, block=64, dtype=torch.bfloat16):
    hi = (packed >> 4).long()
    lo = (packed & 0xF).long()
    idx = torch.stack((hi, lo), dim=1).reshape(-1)
    vals = table[idx].reshape(-1, block) * absmax[:, None]
    return vals.to(dtype).reshape(shape)


def bench_nf4(quick, copy_gbps):
    table = torch.tensor(NF4, device="cuda")
    n = (4096 * 4096) if quick else (8192 * 8192)
    w = torch.randn(n, device="cuda") * 0.02
    packed, absmax = nf4_quantize(w)
    s = timed(lambda: nf4_dequantize(packed, absmax, (n,), table), 5 if quick else 20)
    moved = packed.numel() + 4 * absmax.numel() + 2 * n
    gbps = moved / s / 1e9
    row("torch_nf4_dequantize", f"{n} elements", gbps=gbps,
        extra={"fraction_of_copy": gbps / copy_gbps if copy_gbps else 0, "counts": "packed + absmax read, bf16 written"})
    del w, packed, absmax
    for sname, m, nn, k in (SHAPES[:1] if quick else SHAPES):
        wt = torch.randn(nn, k, device="cuda") * 0.02
        packed, absmax = nf4_quantize(wt)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

        def step():
            wd = nf4_dequantize(packed, absmax, (nn, k), table)
            return x @ wd.T
        s = timed(step, 5 if quick else 20)
        tf = 2 * m * nn * k / s / 1e12
        row("torch_nf4_dequant_matmul", f"{m}x{nn}x{k}", gflops=1000 * tf,
            extra={"shape": sname, "tflops": tf, "peer": "plain-torch NF4 dequantize + torch.matmul bf16"})
        del wt, packed, absmax, x


def read_preset(path):
    """The few keys needed from a configs/*.yaml preset (no PyYAML needed)."""
    cfg, section = {}, None
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            if not line.startswith(" ") and line.endswith(":"):
                section = line[:-1]
                continue
            if ":" in line and section:
                k, v = line.strip().split(":", 1)
                cfg[section + "." + k.strip()] = v.strip()
    return cfg


class LoRALinear(torch.nn.Module):
    """A frozen linear (DTYPE) with a trainable fp32 LoRA pair, or a plain
    frozen linear when r is 0 (a module LoRA does not target)."""

    def __init__(self, fin, fout, r, alpha):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(fout, fin, dtype=DTYPE, device=DEVICE) * 0.02,
                                         requires_grad=False)
        self.r = r
        if r:
            self.a = torch.nn.Parameter((torch.rand(r, fin, device=DEVICE) * 2 - 1) / math.sqrt(fin))
            self.b = torch.nn.Parameter(torch.zeros(fout, r, device=DEVICE))
            self.scale = alpha / r

    def forward(self, x):
        y = x @ self.weight.T
        if not self.r:
            return y
        return y + ((x @ self.a.to(x.dtype).T) @ self.b.to(x.dtype).T) * self.scale


def attention(q, k, v):
    """Causal attention: torch's fused kernel where it has one (2.0 and
    later), else the same arithmetic spelled out (Debian's torch 1.13)."""
    sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    if sdpa is not None:
        return sdpa(q, k, v, is_causal=True)
    T = q.shape[-2]
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1) @ v


def rms(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Block(torch.nn.Module):
    def __init__(self, d, nh, nkv, hidden, r, alpha, eps, targets=ALL_TARGETS):
        super().__init__()
        hd = d // nh
        self.nh, self.nkv, self.hd, self.eps = nh, nkv, hd, eps

        def lin(name, fin, fout):
            return LoRALinear(fin, fout, r if name in targets else 0, alpha)
        self.q, self.k, self.v = lin("q_proj", d, d), lin("k_proj", d, nkv * hd), lin("v_proj", d, nkv * hd)
        self.o = lin("o_proj", d, d)
        self.gate, self.up, self.down = lin("gate_proj", d, hidden), lin("up_proj", d, hidden), lin("down_proj", hidden, d)
        self.ln1 = torch.nn.Parameter(torch.ones(d, dtype=DTYPE, device=DEVICE), requires_grad=False)
        self.ln2 = torch.nn.Parameter(torch.ones(d, dtype=DTYPE, device=DEVICE), requires_grad=False)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        h = rms(x, self.ln1, self.eps)
        q = self.q(h).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if self.nkv != self.nh:
            k = k.repeat_interleave(self.nh // self.nkv, dim=1)
            v = v.repeat_interleave(self.nh // self.nkv, dim=1)
        a = attention(q, k, v)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, D))
        h = rms(x, self.ln2, self.eps)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


def lora_one(name, V, d, L, nh, nkv, hidden, theta, eps, T, B, r, alpha, quick, targets_=ALL_TARGETS):
    """One preset's LoRA step; its tensors die when it returns."""
    emb = torch.randn(V, d, dtype=DTYPE, device=DEVICE) * 0.02  # tied lm_head, frozen
    blocks = torch.nn.ModuleList(Block(d, nh, nkv, hidden, r, alpha, eps, targets_) for _ in range(L))
    normf = torch.ones(d, dtype=DTYPE, device=DEVICE)
    hd = d // nh
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, device=DEVICE).float() / hd))
    ang = torch.outer(torch.arange(T, device=DEVICE).float(), inv)
    cos = torch.cat((ang.cos(), ang.cos()), -1).to(DTYPE)
    sin = torch.cat((ang.sin(), ang.sin()), -1).to(DTYPE)
    params = [p for p in blocks.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
    tokens = torch.randint(0, V, (B, T), device=DEVICE)
    targets = torch.randint(0, V, (B, T), device=DEVICE)

    def step():
        x = emb[tokens]
        for blk in blocks:
            x = blk(x, cos, sin)
        logits = rms(x, normf, eps) @ emb.T
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, V), targets.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    steps = 2 if quick else 5
    s = timed(step, steps)
    tok = B * T / s
    if DEVICE == "cpu":
        import resource
        row("torch_cpu_lora_step", name, extra={
            "tokens_per_s": tok, "step_s": s, "steps": steps, "batch": B, "seq_len": T, "rank": r,
            "targets": ",".join(targets_), "threads": torch.get_num_threads(), "precision": "fp32",
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "peer": "plain-torch fp32 Llama blocks + LoRA (frozen fp32 base), torch " + torch.__version__})
        return
    peak = torch.cuda.max_memory_allocated()
    row("torch_lora_step", name, extra={
        "tokens_per_s": tok, "step_s": s, "steps": steps, "batch": B, "seq_len": T, "rank": r,
        "peak_bytes": peak, "peak_gib": peak / (1 << 30), "precision": "bf16",
        "peer": "plain-torch bf16 Llama blocks + LoRA, torch " + torch.__version__})


def bench_lora(configs, presets, quick):
    for name in presets:
        path = os.path.join(configs, name + ".yaml")
        try:
            c = read_preset(path)
            V, d, L = int(c["model.vocab_size"]), int(c["model.dim"]), int(c["model.n_layers"])
            nh, nkv, hidden = int(c["model.n_heads"]), int(c["model.n_kv_heads"]), int(c["model.hidden_dim"])
            theta, eps = float(c["model.rope_theta"]), float(c["model.norm_eps"])
            T, B = int(c["train.seq_len"]), int(c["train.batch_size"])
            r, alpha = int(c["lora.rank"]), float(c["lora.alpha"])
        except (OSError, KeyError, ValueError) as e:
            row("torch_lora_step", name, error=f"preset {path}: {e!r}")
            continue
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            lora_one(name, V, d, L, nh, nkv, hidden, theta, eps, T, B, r, alpha, quick)
        except torch.cuda.OutOfMemoryError as e:
            row("torch_lora_step", name, error=f"out of memory: {str(e).splitlines()[0]}")
        torch.cuda.empty_cache()


def bench_cpu_gemm(quick):
    for n in (1024,) if quick else (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        s = timed(lambda: torch.matmul(a, b), 3 if quick else 10)
        row("torch_cpu_gemm", f"{n}x{n}x{n}", gflops=2 * n ** 3 / s / 1e9,
            extra={"threads": torch.get_num_threads(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
                   "peer": "torch.matmul fp32 (CPU) " + torch.__version__})


def main_cpu(a):
    """The CPU peers: --shape is the model and step, as JSON (vocab_size,
    dim, n_layers, n_heads, n_kv_heads, hidden_dim, rope_theta, norm_eps,
    seq_len, batch_size, rank, alpha, targets, name)."""
    global DEVICE, DTYPE
    DEVICE, DTYPE = "cpu", torch.float32
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    only = set(a.only.split(","))
    if "gemm" in only:
        bench_cpu_gemm(a.quick)
    if "lora" in only:
        try:
            c = json.loads(a.shape)
            lora_one(c.get("name", "cpu"), int(c["vocab_size"]), int(c["dim"]), int(c["n_layers"]), int(c["n_heads"]),
                     int(c["n_kv_heads"]), int(c["hidden_dim"]), float(c["rope_theta"]), float(c["norm_eps"]),
                     int(c["seq_len"]), int(c["batch_size"]), int(c["rank"]), float(c["alpha"]), a.quick,
                     tuple(c.get("targets", ALL_TARGETS)))
        except (KeyError, ValueError, TypeError) as e:
            row("torch_cpu_lora_step", error=f"--shape {a.shape!r}: {e!r}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--configs", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs"))
    ap.add_argument("--presets", default="gpt2-124m,llama-1b")
    ap.add_argument("--shape", default="{}", help="CPU: the model and step shape as JSON")
    ap.add_argument("--threads", type=int, default=0, help="CPU: torch.set_num_threads (0: torch's default)")
    ap.add_argument("--only", default=None)
    a = ap.parse_args()
    if a.device == "cpu":
        a.only = a.only or "lora"
        return main_cpu(a)
    a.only = a.only or "gemm,copy,nf4,lora"
    if not torch.cuda.is_available():
        print("torch_peers: torch sees no CUDA device", file=sys.stderr)
        return 2
    only = set(a.only.split(","))
    row("torch", extra={"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                        "cuda": torch.version.cuda})
    copy_gbps = 0.0
    if "gemm" in only:
        bench_gemm(a.quick)
    if "copy" in only or "nf4" in only:
        copy_gbps = bench_copy(a.quick)
    if "nf4" in only:
        bench_nf4(a.quick, copy_gbps)
    if "lora" in only:
        bench_lora(a.configs, [p for p in a.presets.split(",") if p], a.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
