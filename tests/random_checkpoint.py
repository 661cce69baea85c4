#!/usr/bin/env python3
"""Writes a random-weight bf16 checkpoint directory at a real Qwen shape (config.json +
model.safetensors), with the Python standard library only, for speed measurements where no trained
weights exist. Weights are random bf16 with magnitudes in [2^-7, 2^-5) and random signs; norm
weights are 1. Not for accuracy checks (tests/gen_fixtures.py makes those with transformers).

    python3 tests/random_checkpoint.py --preset qwen3-0.6b /tmp/qwen3-0.6b
"""
import argparse
import json
import os
import struct

# (model_type, hidden, intermediate, layers, heads, kv_heads, head_dim, vocab, tied, rope_theta, eps)
PRESETS = {
    "qwen2.5-0.5b": ("qwen2", 896, 4864, 24, 14, 2, 64, 151936, True, 1e6, 1e-6),
    "qwen2.5-1.5b": ("qwen2", 1536, 8960, 28, 12, 2, 128, 151936, True, 1e6, 1e-6),
    "qwen2.5-7b": ("qwen2", 3584, 18944, 28, 28, 4, 128, 152064, False, 1e6, 1e-6),
    "qwen3-tiny": ("qwen3", 256, 512, 2, 4, 2, 64, 4096, True, 1e6, 1e-6),  # for bench.sh's own tests
    "qwen3-0.6b": ("qwen3", 1024, 3072, 28, 16, 8, 128, 151936, True, 1e6, 1e-6),
    "qwen3-4b": ("qwen3", 2560, 9728, 36, 32, 8, 128, 151936, True, 1e6, 1e-6),
    "qwen3-1.7b": ("qwen3", 2048, 6144, 28, 16, 8, 128, 151936, True, 1e6, 1e-6),
    "qwen3-8b": ("qwen3", 4096, 12288, 36, 32, 8, 128, 151936, False, 1e6, 1e-6),
    "r1-distill-qwen-1.5b": ("qwen2", 1536, 8960, 28, 12, 2, 128, 151936, False, 1e4, 1e-6),
    "r1-distill-qwen-7b": ("qwen2", 3584, 18944, 28, 28, 4, 128, 152064, False, 1e4, 1e-6),
}

# High byte of a bf16 (sign + top 7 exponent bits): keep the sign, fix the exponent to 120 or 121.
HIGH_BYTE = bytes((b & 0x80) | 0x3C for b in range(256))
CHUNK = 1 << 24


def tensors(p):
    mt, H, I, L, Hq, Hkv, D, V, tied, _, _ = p
    out = [("model.embed_tokens.weight", [V, H], "rand")]
    for i in range(L):
        pre = f"model.layers.{i}."
        out += [(pre + "input_layernorm.weight", [H], "ones"),
                (pre + "self_attn.q_proj.weight", [Hq * D, H], "rand"),
                (pre + "self_attn.k_proj.weight", [Hkv * D, H], "rand"),
                (pre + "self_attn.v_proj.weight", [Hkv * D, H], "rand")]
        if mt == "qwen2":
            out += [(pre + "self_attn.q_proj.bias", [Hq * D], "rand"),
                    (pre + "self_attn.k_proj.bias", [Hkv * D], "rand"),
                    (pre + "self_attn.v_proj.bias", [Hkv * D], "rand")]
        else:
            out += [(pre + "self_attn.q_norm.weight", [D], "ones"),
                    (pre + "self_attn.k_norm.weight", [D], "ones")]
        out += [(pre + "self_attn.o_proj.weight", [H, Hq * D], "rand"),
                (pre + "post_attention_layernorm.weight", [H], "ones"),
                (pre + "mlp.gate_proj.weight", [I, H], "rand"),
                (pre + "mlp.up_proj.weight", [I, H], "rand"),
                (pre + "mlp.down_proj.weight", [H, I], "rand")]
    out.append(("model.norm.weight", [H], "ones"))
    if not tied:
        out.append(("lm_head.weight", [V, H], "rand"))
    return out


def write_data(f, numel, kind):
    remaining = 2 * numel
    while remaining:
        n = min(CHUNK, remaining)
        if kind == "ones":
            buf = b"\x80\x3f" * (n // 2)  # bf16 1.0 = 0x3F80, little endian
        else:
            buf = bytearray(os.urandom(n))
            buf[1::2] = bytes(buf[1::2]).translate(HIGH_BYTE)
        f.write(buf)
        remaining -= n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, help="override the number of layers (smaller, faster checkpoints)")
    ap.add_argument("outdir")
    args = ap.parse_args()
    p = list(PRESETS[args.preset])
    if args.layers:
        p[3] = args.layers
    mt, H, I, L, Hq, Hkv, D, V, tied, theta, eps = p
    os.makedirs(args.outdir, exist_ok=True)
    config = {"architectures": ["Qwen3ForCausalLM" if mt == "qwen3" else "Qwen2ForCausalLM"],
              "model_type": mt, "hidden_size": H, "intermediate_size": I, "num_hidden_layers": L,
              "num_attention_heads": Hq, "num_key_value_heads": Hkv, "head_dim": D, "vocab_size": V,
              "tie_word_embeddings": tied, "rope_theta": theta, "rope_scaling": None, "rms_norm_eps": eps,
              "max_position_embeddings": 40960 if mt == "qwen3" else 32768, "hidden_act": "silu",
              "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151645}
    with open(os.path.join(args.outdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    header, offset, plan = {}, 0, tensors(p)
    for name, shape, _ in plan:
        numel = 1
        for s in shape:
            numel *= s
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + 2 * numel]}
        offset += 2 * numel
    header["__metadata__"] = {"format": "pt"}
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    with open(os.path.join(args.outdir, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)) + hbytes)
        for name, shape, kind in plan:
            numel = 1
            for s in shape:
                numel *= s
            write_data(f, numel, kind)
    print(f"{args.outdir}: {args.preset}, {L} layers, {offset / 1e9:.2f} GB of bf16 weights")


if __name__ == "__main__":
    main()
