#!/usr/bin/env python3
"""Checks nano's reference path against transformers on any checkpoint directory, e.g. a random-weight
one at a real Qwen shape (tests/random_checkpoint.py). Needs torch and transformers.

    python3 tests/hf_compare.py ./nano DIR [--n-prompt 32] [--n-gen 8] [--tol 1e-4]

HF runs in fp32 with eager attention on the CPU; nano runs --ref --kv f32 and dumps its logits. Passes
when max|diff| <= tol * max|logit| over every prompt position, the argmax agrees wherever HF's top two
logits are further apart than that, and the greedy continuations are identical. Exit status 0 or 1.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("nano")
    ap.add_argument("model")
    ap.add_argument("--n-prompt", type=int, default=32)
    ap.add_argument("--n-gen", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    vocab = json.load(open(os.path.join(args.model, "config.json")))["vocab_size"]
    rng = np.random.default_rng(7)
    prompt = rng.integers(0, min(vocab, 150000), args.n_prompt).tolist()

    torch.set_grad_enabled(False)
    t = time.time()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager")
    ids = torch.tensor([prompt])
    ref = model(ids).logits[0].numpy()
    out = model.generate(ids, max_new_tokens=args.n_gen, do_sample=False, min_new_tokens=args.n_gen)
    hf_gen = out[0, args.n_prompt:].tolist()
    t_hf = time.time() - t

    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "logits.f32")
        t = time.time()
        r = subprocess.run([args.nano, "-m", args.model, "--prompt-ids", " ".join(map(str, prompt)), "-n", str(args.n_gen),
                            "--temp", "0", "--print-ids", "--dump-logits", dump, "--kv", "f32", "--ref"],
                           capture_output=True, text=True)
        t_nano = time.time() - t
        if r.returncode != 0:
            print(f"FAIL {args.model}: nano exited {r.returncode}: {r.stderr.strip()}")
            return 1
        got = np.fromfile(dump, dtype="<f4").reshape(args.n_prompt, -1)
    nano_gen = [int(x) for x in r.stdout.split()]

    max_abs = float(np.abs(ref).max())
    rel = float(np.abs(got - ref).max()) / max_abs
    top2 = np.sort(ref, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > args.tol * max_abs
    mismatches = int(((got.argmax(1) != ref.argmax(1)) & decided).sum())
    ok = rel <= args.tol and mismatches == 0 and nano_gen == hf_gen
    print(f"{'ok  ' if ok else 'FAIL'} {args.model}: max|diff|/max|logit| = {rel:.2e} (max|logit| {max_abs:.3g}), "
          f"argmax mismatches {mismatches}/{args.n_prompt}, greedy nano {nano_gen} HF {hf_gen}; "
          f"HF {t_hf:.1f} s, nano {t_nano:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
