#!/usr/bin/env python3
"""PyTorch peers for the GPU bench, measured in the same run as ours.

Prints one JSON object per line in the row format of `opencluster bench
--json` (name, size, gflops, gbps, extra). Needs only torch (no
bitsandbytes): NF4 dequantization is written here in plain torch with the
same code table, block size and nibble order as quant/ (bitsandbytes' NF4,
block 64, fp32 absmax, first element in the high nibble).

Rows:
  torch_gemm_<dtype>        torch.matmul (cuBLAS) in fp32 (tf32 off), tf32, bf16, fp16
  torch_copy                dst.copy_(src) of 1 GiB; gbps counts bytes read + written
  torch_nf4_dequantize      NF4 -> bf16 in plain torch; gbps counts packed + absmax read + bf16 written
  torch_nf4_dequant_matmul  dequantize W then x @ W.T in bf16; gflops = 2mnk / (both)
  torch_lora_step           bf16 Llama block stack, LoRA r=16 on every linear, AdamW on the
                            adapters; extra.tokens_per_s and extra.peak_bytes
                            (torch.cuda.max_memory_allocated)

Usage: torch_peers.py [--quick] [--configs DIR] [--presets gpt2-124m,llama-1b] [--only gemm,copy,nf4,lora]
"""
import argparse
import json
import math
import os
import sys
import time

import torch

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
    """Median-free simple timing with CUDA events after one warm-up: seconds per call."""
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
    def __init__(self, fin, fout, r, alpha):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(fout, fin, dtype=torch.bfloat16, device="cuda") * 0.02,
                                         requires_grad=False)
        self.a = torch.nn.Parameter((torch.rand(r, fin, device="cuda") * 2 - 1) / math.sqrt(fin))
        self.b = torch.nn.Parameter(torch.zeros(fout, r, device="cuda"))
        self.scale = alpha / r

    def forward(self, x):
        return x @ self.weight.T + ((x @ self.a.to(x.dtype).T) @ self.b.to(x.dtype).T) * self.scale


def rms(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Block(torch.nn.Module):
    def __init__(self, d, nh, nkv, hidden, r, alpha, eps):
        super().__init__()
        hd = d // nh
        self.nh, self.nkv, self.hd, self.eps = nh, nkv, hd, eps
        self.q, self.k, self.v = LoRALinear(d, d, r, alpha), LoRALinear(d, nkv * hd, r, alpha), LoRALinear(d, nkv * hd, r, alpha)
        self.o = LoRALinear(d, d, r, alpha)
        self.gate, self.up, self.down = LoRALinear(d, hidden, r, alpha), LoRALinear(d, hidden, r, alpha), LoRALinear(hidden, d, r, alpha)
        self.ln1 = torch.nn.Parameter(torch.ones(d, dtype=torch.bfloat16, device="cuda"), requires_grad=False)
        self.ln2 = torch.nn.Parameter(torch.ones(d, dtype=torch.bfloat16, device="cuda"), requires_grad=False)

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
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, D))
        h = rms(x, self.ln2, self.eps)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


def lora_one(name, V, d, L, nh, nkv, hidden, theta, eps, T, B, r, alpha, quick):
    """One preset's LoRA step; its tensors die when it returns."""
    emb = torch.randn(V, d, dtype=torch.bfloat16, device="cuda") * 0.02  # tied lm_head, frozen
    blocks = torch.nn.ModuleList(Block(d, nh, nkv, hidden, r, alpha, eps) for _ in range(L))
    normf = torch.ones(d, dtype=torch.bfloat16, device="cuda")
    hd = d // nh
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, device="cuda").float() / hd))
    ang = torch.outer(torch.arange(T, device="cuda").float(), inv)
    cos = torch.cat((ang.cos(), ang.cos()), -1).to(torch.bfloat16)
    sin = torch.cat((ang.sin(), ang.sin()), -1).to(torch.bfloat16)
    params = [p for p in blocks.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
    tokens = torch.randint(0, V, (B, T), device="cuda")
    targets = torch.randint(0, V, (B, T), device="cuda")

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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--configs", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs"))
    ap.add_argument("--presets", default="gpt2-124m,llama-1b")
    ap.add_argument("--only", default="gemm,copy,nf4,lora")
    a = ap.parse_args()
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
