#!/usr/bin/env python3
"""PyTorch peer of train's BenchmarkGenerate1B: generation tokens/s on the CPU.

The same work as the Go benchmark: a Llama-architecture model at the Llama
3.2 1B shape (configs/llama-1b.yaml) with random fp32 weights, a 128-token
prompt prefilled once, then one token at a time through a KV cache; greedy
argmax, as the benchmark's cost does not depend on which token is drawn.
The attention is written out (torch 1.13 has no scaled_dot_product_attention)
in the shape transformers' eager path computes it.

Usage: torch_generate.py [--threads N] [--tokens N]
Prints one JSON object: {"name": "torch_generate_1b_fp32", "tokens_per_s": ...}.
"""
import argparse
import json
import time

import torch

V, D, L, H, KVH, HID, THETA, EPS = 128256, 2048, 16, 32, 8, 8192, 500000.0, 1e-5
HD = D // H


def rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(1)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    emb = w(V, D)
    layers = [dict(q=w(H * HD, D), k=w(KVH * HD, D), v=w(KVH * HD, D), o=w(D, H * HD),
                   gate=w(HID, D), up=w(HID, D), down=w(D, HID), ln1=torch.ones(D), ln2=torch.ones(D))
              for _ in range(L)]
    norm = torch.ones(D)
    inv = 1.0 / (THETA ** (torch.arange(0, HD, 2, dtype=torch.float32) / HD))
    maxT = 2048
    ang = torch.outer(torch.arange(maxT, dtype=torch.float32), inv)
    COS, SIN = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    kc = [torch.zeros(KVH, maxT, HD) for _ in range(L)]
    vc = [torch.zeros(KVH, maxT, HD) for _ in range(L)]

    def forward(ids, pos):
        T = len(ids)
        x = emb[torch.tensor(ids)]
        cos, sin = COS[pos:pos + T], SIN[pos:pos + T]
        for i, p in enumerate(layers):
            h = rms(x, p["ln1"])
            q = (h @ p["q"].T).view(T, H, HD).transpose(0, 1)
            k = (h @ p["k"].T).view(T, KVH, HD).transpose(0, 1)
            v = (h @ p["v"].T).view(T, KVH, HD).transpose(0, 1)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            kc[i][:, pos:pos + T], vc[i][:, pos:pos + T] = k, v
            K = kc[i][:, :pos + T].repeat_interleave(H // KVH, 0)
            Vv = vc[i][:, :pos + T].repeat_interleave(H // KVH, 0)
            s = q @ K.transpose(1, 2) / HD ** 0.5
            if T > 1:
                s = s + torch.triu(torch.full((T, pos + T), float("-inf")), diagonal=pos + 1)
            a = (torch.softmax(s, -1) @ Vv).transpose(0, 1).reshape(T, H * HD)
            x = x + a @ p["o"].T
            h = rms(x, p["ln2"])
            x = x + (torch.nn.functional.silu(h @ p["gate"].T) * (h @ p["up"].T)) @ p["down"].T
        return rms(x[-1:], norm) @ emb.T

    with torch.no_grad():
        prompt = torch.randint(0, V, (128,), generator=g).tolist()
        logits = forward(prompt, 0)
        pos = len(prompt)
        tok = int(logits.argmax())
        forward([tok], pos)  # warm-up step
        pos += 1
        t0 = time.perf_counter()
        for _ in range(args.tokens):
            tok = int(forward([tok], pos).argmax())
            pos += 1
        dt = time.perf_counter() - t0
    print(json.dumps({"name": "torch_generate_1b_fp32", "tokens": args.tokens, "seconds": dt,
                      "tokens_per_s": args.tokens / dt, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
