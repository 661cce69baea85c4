#!/usr/bin/env python3
"""Random-weight checkpoints at real Qwen shapes, with transformers' fp32 logits over a long sequence,
for the GPU engine's end-to-end check (build/test_gpu --hf DIR) and its benchmark (--bench DIR).
Runs on the GPU machine (torch, transformers 5.x, one CUDA GPU).

    python3 tests/gen_gpu_checkpoints.py OUTDIR [--presets qwen3-0.6b,qwen2.5-1.5b,qwen3-8b] [--ctx 2048] [--steps 256]

For each preset, OUTDIR/<preset>/ gets what save_pretrained writes (bf16) and hf_logits.bin.
Weights: transformers' own init (normal, std 0.02) on the GPU; every norm weight ~ U(0.5, 1.5); Qwen2
q/v biases ~ N(0, 0.5) and k_proj biases with Qwen2.5's outliers (k_bias_profile). That init gives logits with a std well under 1, where every
distribution is nearly flat and KLD or top-1 say little, so model.norm.weight is scaled until the
logits' std over a sample is 3 (>= 2 as the check asks). All parameters are rounded to bf16 before the
reference runs, so the saved checkpoint holds exactly the weights transformers computed with.
The reference: the model in fp32 (eager attention, no TF32) over ctx + steps pseudo-random ids below
150000, one forward; hf_logits.bin keeps the logits of the last 2 * steps positions:

    char magic[8] = "NANOHFLG"; uint32 version = 1, n_tokens, vocab, first_row, n_rows;
    int32 ids[n_tokens]; float32 logits[n_rows][vocab]            (little endian)
"""
import argparse
import os
import struct
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import transformers.models.qwen2.modeling_qwen2 as modeling_qwen2
import transformers.models.qwen3.modeling_qwen3 as modeling_qwen3
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

# arch, hidden, intermediate, layers, heads, kv heads, head_dim, vocab, tied, rope_theta
PRESETS = {
    "qwen3-0.6b": ("qwen3", 1024, 3072, 28, 16, 8, 128, 151936, True, 1e6),
    "qwen3-1.7b": ("qwen3", 2048, 6144, 28, 16, 8, 128, 151936, True, 1e6),
    "qwen2.5-1.5b": ("qwen2", 1536, 8960, 28, 12, 2, 128, 151936, True, 1e6),
    "qwen3-8b": ("qwen3", 4096, 12288, 36, 32, 8, 128, 151936, False, 1e6),
}
TARGET_STD = 2.0


def k_bias_profile(layer, L, Hkv, D, g):
    """A k_proj bias like Qwen2.5's (published: norm 605 in the first and 921 in the last layer of the
    7B, ~22 elsewhere; 1.5B key absmax 355 with the bias, 4.3 without): N(0, 2) per channel (norm ~32
    over 2 kv heads), and in the first and last layer three low-frequency RoPE channels per kv head
    (i = D/2 - 1, D/2 - 2, D/2 - 5, which barely rotate) carrying the rest of a norm of 600 / 900."""
    v = 2.0 * torch.randn(Hkv * D, generator=g, device="cuda")
    if layer in (0, L - 1):
        norm = 600.0 if layer == 0 else 900.0
        chans = [h * D + D // 2 - k for h in range(Hkv) for k in (1, 2, 5)]
        signs = torch.tensor([1.0, -1.0, 1.0] * Hkv, device="cuda")
        v[chans] = signs * norm / len(chans) ** 0.5
    return v


def build(preset, seed):
    arch, H, I, L, Hq, Hkv, D, V, tied, theta = PRESETS[preset]
    common = dict(vocab_size=V, hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=Hq,
                  num_key_value_heads=Hkv, hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=tied,
                  max_position_embeddings=40960 if arch == "qwen3" else 32768, bos_token_id=151643,
                  eos_token_id=151645)
    if arch == "qwen3":
        cfg_cls, model_cls = Qwen3Config, Qwen3ForCausalLM
        common["head_dim"] = D
    else:
        cfg_cls, model_cls = Qwen2Config, Qwen2ForCausalLM
    try:
        cfg = cfg_cls(rope_parameters={"rope_type": "default", "rope_theta": theta}, **common)
    except TypeError:
        cfg = cfg_cls(rope_theta=theta, **common)
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = model_cls(cfg)
    try:
        model.set_attn_implementation("eager")
    except Exception:
        cfg._attn_implementation = "eager"
    model.eval()
    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g, device="cuda"))
            elif name.endswith(".bias"):
                v = 0.5 * torch.randn(p.shape, generator=g, device="cuda")
                if "k_proj" in name:
                    v = k_bias_profile(int(name.split(".")[2]), L, Hkv, D, g)
                p.copy_(v)
    return model


def kv_bf16(on):
    """Round K and V to bf16 inside transformers' eager attention (on), or restore it."""
    for mod in (modeling_qwen2, modeling_qwen3):
        if not hasattr(mod, "_nano_eager"):
            mod._nano_eager = mod.eager_attention_forward
        orig = mod._nano_eager

        def rounded(module, query, key, value, *args, _orig=orig, **kwargs):
            return _orig(module, query, key.to(torch.bfloat16).to(key.dtype), value.to(torch.bfloat16).to(value.dtype),
                         *args, **kwargs)

        mod.eager_attention_forward = rounded if on else orig


def write_logits(path, ids, V, first, rows):
    with open(path, "wb") as f:
        f.write(b"NANOHFLG" + struct.pack("<5I", 1, len(ids), V, first, rows.shape[0]))
        f.write(ids.astype("<i4").tobytes())
        f.write(rows.tobytes())


def round_bf16(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--presets", default="qwen3-0.6b,qwen2.5-1.5b,qwen3-8b")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--no-logits", action="store_true", help="checkpoint only (for the benchmark)")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_grad_enabled(False)
    for k, preset in enumerate(args.presets.split(",")):
        t0 = time.time()
        d = os.path.join(args.outdir, preset)
        os.makedirs(d, exist_ok=True)
        model = build(preset, 1234 + k)
        V = model.config.vocab_size
        n = args.ctx + args.steps
        ids = np.random.default_rng(99 + k).integers(0, min(V, 150000), n)
        ids_t = torch.tensor(ids[None, :], device="cuda")
        round_bf16(model)
        sample = model(ids_t[:, :64]).logits.float()
        std = float(sample.std(dim=-1).mean())
        with torch.no_grad():
            model.model.norm.weight.mul_(TARGET_STD / std)
        round_bf16(model)
        msg = f"{preset}: logits std {std:.3f} before the final-norm scale"
        if not args.no_logits:
            first = n - 2 * args.steps
            logits = model(ids_t).logits[0, first:].float()
            std_after = float(logits.std(dim=-1).mean())
            write_logits(os.path.join(d, "hf_logits.bin"), ids, V, first, logits.cpu().numpy().astype("<f4"))
            kv_bf16(True)
            logits_kv = model(ids_t).logits[0, first:].float()
            kv_bf16(False)
            moved = float((logits_kv - logits).abs().max())
            msg += f", {std_after:.3f} after (positions {first}..{n - 1}); "
            if moved > 0:
                write_logits(os.path.join(d, "hf_logits_kvbf16.bin"), ids, V, first, logits_kv.cpu().numpy().astype("<f4"))
                msg += f"bf16 K/V moves logits by up to {moved:.3g}"
            else:
                msg += "WARNING: rounding K/V in the eager attention changed nothing (patch not applied); no hf_logits_kvbf16.bin"
            del logits, logits_kv
        model.to(torch.bfloat16).save_pretrained(d)
        del model
        torch.cuda.empty_cache()
        print(f"{msg}; written in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
