#!/usr/bin/env python3
"""An independent reference forward for Hugging Face causal-LM folders.

Reads a model folder (config.json, model.safetensors or shards listed in
model.safetensors.index.json; F32, F16 or BF16 weights, or the bitsandbytes
4-bit layout) and optionally a PEFT LoRA adapter folder, runs the forward
pass of LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM as
transformers' modeling code defines it, in float64 with plain torch (no
transformers, no safetensors package, no bitsandbytes, nothing from the Go
code under test), and prints the mean cross-entropy over scored targets.

Usage:
  hf_reference.py JOB_JSON [--also-drop KEY]... [--also-zero-biases]

JOB_JSON is {"models": [{"dir": MODEL_DIR, "adapter": ADAPTER_DIR or ""}...],
"tokens": [[id...]...], "targets": [[id...]...]}; a target below 0 is not
scored. Each model is scored in turn, in one process (torch takes seconds
to import): one JSON line each, {"loss": mean nats per scored
token, "count": scored tokens, "variants": {...}}. Each --also-drop KEY adds
the loss with that config.json key deleted ("drop:KEY") and
--also-zero-biases the loss with every bias zeroed ("zero-biases"): the
tests use them to show that the comparison would notice a field being
ignored.
"""
import argparse
import json
import math
import os
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "U8": torch.uint8, "I64": torch.int64, "I32": torch.int32}


def read_safetensors(path):
    """Returns {name: (dtype, shape, raw bytes)} of one safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = (meta["dtype"], meta["shape"], blob[base + a:base + b])
    return out


def to_tensor(entry):
    dtype, shape, raw = entry
    t = torch.frombuffer(bytearray(raw), dtype=DTYPES[dtype]) if raw else torch.zeros(0, dtype=DTYPES[dtype])
    return t.reshape(shape)


def read_folder(d):
    if os.path.exists(os.path.join(d, "model.safetensors")):
        return read_safetensors(os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        index = json.load(f)
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(read_safetensors(os.path.join(d, shard)))
    return out


def dequantize_bnb(raw, name):
    """bitsandbytes Linear4bit weight -> float64, from its quant state."""
    state_key = [k for k in raw if k.startswith(name + ".quant_state.bitsandbytes__")][0]
    state = json.loads(bytes(to_tensor(raw[state_key]).tolist()).decode())
    packed = to_tensor(raw[name]).reshape(-1).to(torch.int64)
    codes = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)  # first element: high nibble
    n = math.prod(state["shape"])
    codes = codes[:n]
    code_values = to_tensor(raw[name + ".quant_map"]).to(torch.float64)
    bs = state["blocksize"]
    if "nested_offset" in state:
        nested_codes = to_tensor(raw[name + ".absmax"]).to(torch.int64)
        nested_map = to_tensor(raw[name + ".nested_quant_map"]).to(torch.float64)
        nested_absmax = to_tensor(raw[name + ".nested_absmax"]).to(torch.float64)
        nbs = state["nested_blocksize"]
        idx = torch.arange(nested_codes.numel()) // nbs
        # bitsandbytes computes the nested dequantization in float32
        absmax = (nested_map[nested_codes] * nested_absmax[idx]).to(torch.float32).to(torch.float64)
        absmax = (absmax + state["nested_offset"]).to(torch.float32).to(torch.float64)
    else:
        absmax = to_tensor(raw[name + ".absmax"]).to(torch.float64)
    blocks = torch.arange(n) // bs
    w = (code_values[codes] * absmax[blocks]).to(torch.float32).to(torch.float64)
    return w.reshape(state["shape"])


class Weights:
    def __init__(self, raw):
        self.raw = raw

    def has(self, name):
        return name in self.raw

    def get(self, name):
        dtype = self.raw[name][0]
        if dtype == "U8" and any(k.startswith(name + ".quant_state.") for k in self.raw):
            return dequantize_bnb(self.raw, name)
        return to_tensor(self.raw[name]).to(torch.float64)


def inv_freq(cfg, head_dim):
    """RoPE inverse frequencies as transformers' modeling_rope_utils computes them."""
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    base = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    f = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if rope_type == "default":
        return f
    if rope_type == "linear":
        return f / rope["factor"]
    if rope_type == "llama3":
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope.get("original_max_position_embeddings", cfg.get("max_position_embeddings"))
        wavelen = 2 * math.pi / f
        scaled = torch.where(wavelen > old / lo, f / factor, f)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        return torch.where(medium, smoothed, scaled)
    raise SystemExit("reference: rope type %r not written" % rope_type)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class Model:
    def __init__(self, d, adapter=None, drop=(), zero_biases=False):
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        for k in drop:
            cfg.pop(k, None)
        self.cfg = cfg
        arch = cfg["architectures"][0]
        self.arch = arch
        self.w = Weights(read_folder(d))
        self.H = cfg["num_attention_heads"]
        self.KVH = cfg.get("num_key_value_heads") or self.H
        self.hd = cfg.get("head_dim") or cfg["hidden_size"] // self.H
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.inv_freq = inv_freq(cfg, self.hd)
        attn_bias = cfg.get("attention_bias", False) if arch == "LlamaForCausalLM" else False
        self.bias = {"q_proj": attn_bias, "k_proj": attn_bias, "v_proj": attn_bias, "o_proj": attn_bias}
        if arch == "Qwen2ForCausalLM":
            self.bias.update(q_proj=True, k_proj=True, v_proj=True, o_proj=False)
        mlp_bias = cfg.get("mlp_bias", False) if arch == "LlamaForCausalLM" else False
        self.bias.update(gate_proj=mlp_bias, up_proj=mlp_bias, down_proj=mlp_bias)
        self.zero_biases = zero_biases
        self.window = None
        if arch == "MistralForCausalLM":
            self.window = cfg.get("sliding_window", 4096)
        elif arch == "Qwen2ForCausalLM" and cfg.get("use_sliding_window"):
            self.window = cfg.get("sliding_window", 4096)
            self.window_from = cfg.get("max_window_layers", 28)
        self.lora, self.scale = {}, 0.0
        if adapter:
            with open(os.path.join(adapter, "adapter_config.json")) as f:
                ac = json.load(f)
            self.scale = ac["lora_alpha"] / ac["r"]
            raw = read_safetensors(os.path.join(adapter, "adapter_model.safetensors"))
            self.lora = {k: to_tensor(v).to(torch.float64) for k, v in raw.items()}

    def linear(self, x, prefix, module):
        y = x @ self.w.get(prefix + ".weight").T
        if self.bias[module]:
            b = self.w.get(prefix + ".bias")
            if not self.zero_biases:
                y = y + b
        a = self.lora.get("base_model.model." + prefix + ".lora_A.weight")
        if a is not None:
            bb = self.lora["base_model.model." + prefix + ".lora_B.weight"]
            y = y + (x @ a.T) @ bb.T * self.scale
        return y

    def window_for(self, layer):
        if self.window is None:
            return None
        if self.arch == "Qwen2ForCausalLM" and layer < self.window_from:
            return None
        return self.window

    def logits(self, ids):
        cfg = self.cfg
        T = len(ids)
        x = self.w.get("model.embed_tokens.weight")[torch.tensor(ids)]
        pos = torch.arange(T, dtype=torch.float64)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        qi = torch.arange(T)[:, None]
        ki = torch.arange(T)[None, :]
        for l in range(cfg["num_hidden_layers"]):
            p = "model.layers.%d." % l
            h = rms_norm(x, self.w.get(p + "input_layernorm.weight"), self.eps)
            q = self.linear(h, p + "self_attn.q_proj", "q_proj").view(T, self.H, self.hd).transpose(0, 1)
            k = self.linear(h, p + "self_attn.k_proj", "k_proj").view(T, self.KVH, self.hd).transpose(0, 1)
            v = self.linear(h, p + "self_attn.v_proj", "v_proj").view(T, self.KVH, self.hd).transpose(0, 1)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            rep = self.H // self.KVH
            k = k.repeat_interleave(rep, dim=0)
            v = v.repeat_interleave(rep, dim=0)
            s = q @ k.transpose(1, 2) * self.hd ** -0.5
            allowed = ki <= qi
            w = self.window_for(l)
            if w is not None:
                allowed = allowed & (ki > qi - w)
            s = s.masked_fill(~allowed, float("-inf"))
            a = torch.softmax(s, dim=-1) @ v
            a = a.transpose(0, 1).reshape(T, self.H * self.hd)
            x = x + self.linear(a, p + "self_attn.o_proj", "o_proj")
            h = rms_norm(x, self.w.get(p + "post_attention_layernorm.weight"), self.eps)
            g = self.linear(h, p + "mlp.gate_proj", "gate_proj")
            u = self.linear(h, p + "mlp.up_proj", "up_proj")
            x = x + self.linear(torch.nn.functional.silu(g) * u, p + "mlp.down_proj", "down_proj")
        x = rms_norm(x, self.w.get("model.norm.weight"), self.eps)
        tied = cfg.get("tie_word_embeddings", False)
        head = "model.embed_tokens.weight" if tied or not self.w.has("lm_head.weight") else "lm_head.weight"
        return x @ self.w.get(head).T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("--also-drop", action="append", default=[])
    ap.add_argument("--also-zero-biases", action="store_true")
    args = ap.parse_args()
    with open(args.job) as f:
        win = json.load(f)

    def loss(m):
        total, count = 0.0, 0
        with torch.no_grad():
            for ids, tg in zip(win["tokens"], win["targets"]):
                lp = torch.log_softmax(m.logits(ids), dim=-1)
                for t, target in enumerate(tg):
                    if target >= 0:
                        total -= lp[t, target].item()
                        count += 1
        return total / count, count

    for job in win["models"]:
        model, adapter = job["dir"], job.get("adapter")
        mean, count = loss(Model(model, adapter or None))
        variants = {}
        for key in args.also_drop:
            variants["drop:" + key] = loss(Model(model, adapter or None, drop=[key]))[0]
        if args.also_zero_biases:
            variants["zero-biases"] = loss(Model(model, adapter or None, zero_biases=True))[0]
        json.dump({"loss": mean, "count": count, "variants": variants}, sys.stdout)
        print()


if __name__ == "__main__":
    main()
