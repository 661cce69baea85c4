#!/usr/bin/env python3
"""Trains models/qwen3-tiny-classics: a byte-level BPE tokenizer with Qwen's exact pipeline and a small
Qwen3ForCausalLM on public-domain English text (Austen, the King James Bible, Moby Dick), saved as a
Hugging Face checkpoint directory, plus the CPU perplexity fixture tests/fixtures/tiny_ppl/.

Needs torch, transformers and tokenizers and one CUDA GPU (a few minutes on an H100):

    python3 models/train_tiny.py --corpus ../shared/corpus

The data split needs only the standard library; this writes the held-out text that the reported
held-out perplexity is measured on:

    python3 models/train_tiny.py --corpus ../shared/corpus --dump-heldout /tmp/heldout.txt

Data. Each corpus file (sorted by name) is read as UTF-8, a byte order mark is dropped, CRLF becomes LF,
a Project Gutenberg header/footer is cut at its "*** START OF" / "*** END OF" lines, and surrounding
blank lines are trimmed to one final newline. The line holding the character at 94% of a file ends its
training part, the line holding the character at 95% ends its validation part (used only to pick the
checkpoint), and the rest is held out. The tokenizer is trained on training + validation parts.

Perplexity protocol (nano implements the same): ids = the text tokenized with no special tokens, N of
them. Windows of C tokens start at b = 0, S, 2S, ... and cover ids[b : min(b+C, N)]; the last one is the
first that reaches N. Each window scores only positions no earlier window scored (the first scores
1..end-1), predicting ids[t] from ids[b..t-1]. ppl = exp(mean NLL over the N-1 scored positions).
"""
import argparse
import json
import math
import os
import shlex
import sys
import time

QWEN_PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # special: true
PLAIN_ADDED_TOKENS = ["<think>", "</think>"]                       # special: false, as in Qwen3

# Qwen2.5-style ChatML without tools. The model was never chat-tuned; the template is here so that chat
# front ends work on it.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# name: (hidden, layers, q heads, kv heads, intermediate); head_dim is --head-dim (64)
SHAPES = {
    "h256-l8": (256, 8, 4, 2, 704),
    "h384-l4": (384, 4, 6, 2, 704),
    "h192-l8": (192, 8, 4, 2, 512),
}

FIXTURE_MODEL = "models/qwen3-tiny-classics"
FIXTURE_TEXT = "tests/fixtures/tiny_ppl/heldout.txt"
PROMPTS = ["It is a truth universally acknowledged", "Call me Ishmael.", "In the beginning"]

T_START = time.time()


def log(msg):
    print(f"[{time.time() - T_START:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------- data (standard library only)

def clean_text(raw):
    text = raw.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    s = text.find("*** START OF")
    if s >= 0:
        nl = text.find("\n", s)
        text = text[nl + 1:] if nl >= 0 else ""
    e = text.find("*** END OF")
    if e >= 0:
        text = text[:e]
    return text.strip("\n") + "\n"


def line_end_after(text, frac):
    """Index just past the newline that ends the line holding character int(len*frac)."""
    i = int(len(text) * frac)
    j = text.find("\n", i)
    return len(text) if j < 0 else j + 1


def load_corpus(corpus_dir):
    names = sorted(n for n in os.listdir(corpus_dir) if n.endswith(".txt"))
    if not names:
        raise SystemExit(f"no .txt files in {corpus_dir}")
    docs = []
    for n in names:
        with open(os.path.join(corpus_dir, n), "rb") as f:
            text = clean_text(f.read())
        a = line_end_after(text, 0.94)
        b = line_end_after(text, 0.95)
        docs.append({"name": n, "train": text[:a], "val": text[a:b], "heldout": text[b:]})
    return docs


def train_slice(doc):
    """Start of the training part, as long as the held-out part, ended on a line boundary."""
    t = doc["train"]
    n = len(doc["heldout"])
    if n >= len(t):
        return t
    j = t.find("\n", n)
    return t if j < 0 else t[:j + 1]


def line_blocks(text, lines_per_block=100):
    lines = text.splitlines(keepends=True)
    for i in range(0, len(lines), lines_per_block):
        yield "".join(lines[i:i + lines_per_block])


def windows(n, ctx, stride):
    """[(begin, end, first scored position)] of the perplexity protocol."""
    assert 0 < stride <= ctx
    out, b, done = [], 0, 1
    while True:
        e = min(b + ctx, n)
        out.append((b, e, max(done, b + 1)))
        done = e
        if e >= n:
            return out
        b += stride


# ---------------------------------------------------------------- tokenizer

def train_tokenizer(texts, vocab_size):
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                            processors, trainers)
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    n_added = len(SPECIAL_TOKENS) + len(PLAIN_ADDED_TOKENS)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_added, min_frequency=2, show_progress=False,
                                  special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def it():
        for t in texts:
            yield from line_blocks(t)

    tok.train_from_iterator(it(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                                       special=True) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                               special=False) for t in PLAIN_ADDED_TOKENS])

    # Write the pipeline exactly as Qwen's tokenizer.json spells it.
    d = json.loads(tok.to_str())
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    d["normalizer"] = {"type": "NFC"}
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN_PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False},
        dict(bl)]}
    d["post_processor"] = dict(bl)
    d["decoder"] = dict(bl)
    m = d["model"]
    assert m["type"] == "BPE"
    d["model"] = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": m["vocab"], "merges": m["merges"]}
    n_bpe = len(m["vocab"])
    added = []
    for i, t in enumerate(SPECIAL_TOKENS + PLAIN_ADDED_TOKENS):
        added.append({"id": n_bpe + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": t in SPECIAL_TOKENS})
    got = {a["content"]: a["id"] for a in d["added_tokens"]}
    if got != {a["content"]: a["id"] for a in added}:
        raise SystemExit(f"unexpected added token ids: {got}")
    d["added_tokens"] = added
    text = json.dumps(d, ensure_ascii=False, indent=2)
    tok = Tokenizer.from_str(text)
    return tok, text


def tokenizer_config(tok_ids, max_pos, tokenizer_class):
    atd = {}
    for t in SPECIAL_TOKENS + PLAIN_ADDED_TOKENS:
        atd[str(tok_ids[t])] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                "single_word": False, "special": t in SPECIAL_TOKENS}
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": atd,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": max_pos,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": tokenizer_class,
        "unk_token": None,
    }
    if tokenizer_class != "Qwen2Tokenizer":
        del cfg["additional_special_tokens"], cfg["errors"]
    return cfg


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2, allow_nan=False)
        f.write("\n")


# ---------------------------------------------------------------- model

def make_config(shape, vocab_size, args, eot_id):
    import transformers
    from transformers import Qwen3Config
    H, L, Hq, Hkv, I = shape
    kw = dict(vocab_size=vocab_size, hidden_size=H, intermediate_size=I, num_hidden_layers=L,
              num_attention_heads=Hq, num_key_value_heads=Hkv, head_dim=args.head_dim, hidden_act="silu",
              max_position_embeddings=args.max_pos, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
              tie_word_embeddings=True, attention_bias=False, attention_dropout=0.0, use_sliding_window=False,
              bos_token_id=None, eos_token_id=eot_id, pad_token_id=eot_id)
    if int(transformers.__version__.split(".")[0]) >= 5:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": float(args.rope_theta)}
    else:
        kw["rope_theta"] = float(args.rope_theta)
    cfg = Qwen3Config(**kw)
    rp = getattr(cfg, "rope_parameters", None) or {}
    theta = rp.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None or abs(float(theta) - args.rope_theta) > 1e-6:
        raise SystemExit(f"rope_theta not set as asked: {theta}")
    return cfg


def window_nll(model, ids, ctx, stride, device, autocast=False, batch=16):
    """(sum of NLL as a Python float, number of scored tokens) under the perplexity protocol."""
    import torch
    n = len(ids)
    if n < 2:
        return 0.0, 0
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    wins = windows(n, ctx, stride)
    groups = {}
    for w in wins:
        groups.setdefault(w[1] - w[0], []).append(w)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for length, ws in groups.items():
            for i in range(0, len(ws), batch):
                chunk = ws[i:i + batch]
                x = torch.stack([ids_t[b:e] for b, e, _ in chunk]).to(device)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
                    logits = model(input_ids=x, use_cache=False).logits
                logp = torch.log_softmax(logits.float(), dim=-1)
                for j, (b, e, first) in enumerate(chunk):
                    lp = logp[j, first - 1 - b:e - 1 - b]
                    tgt = x[j, first - b:e - b]
                    nll = -lp.gather(-1, tgt[:, None]).squeeze(-1)
                    total += float(nll.double().sum())
                    count += e - first
    if was_training:
        model.train()
    assert count == n - 1, (count, n)
    return total, count


def train_candidate(name, shape, data, val_ids, vocab_size, eot_id, args, cap_s, device):
    import torch
    import torch.nn.functional as F
    from transformers import Qwen3ForCausalLM
    torch.manual_seed(args.seed)
    cfg = make_config(shape, vocab_size, args, eot_id)
    model = Qwen3ForCausalLM(cfg).to(device)
    model.train()
    nparams = sum(p.numel() for p in model.parameters())
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    log(f"[{name}] shape H={shape[0]} L={shape[1]} Hq={shape[2]} Hkv={shape[3]} D={args.head_dim} "
        f"I={shape[4]} V={vocab_size}: {nparams:,} parameters ({2 * nparams / 1e6:.2f} MB bf16), tied={tied}")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    except Exception:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    B, T = args.batch, args.ctx
    steps_per_epoch = max(1, len(data) // (B * T))
    planned = args.smoke_steps if args.smoke else max(1, int(args.epochs * steps_per_epoch))
    warm = max(1, min(args.warmup, planned // 10))
    total = planned

    def lr_at(step):
        if step < warm:
            return args.lr * (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, total - warm))
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))

    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed + 1)
    ar = torch.arange(T + 1, device=device)
    eval_every = max(10, planned // 12)
    best_nll, best_state, best_step, curve = float("inf"), None, -1, []
    log(f"[{name}] {steps_per_epoch} steps/epoch of {B}x{T} tokens, planned {planned} steps, cap {cap_s:.0f}s")
    t0 = time.time()
    t_probe = None
    step, last_eval = 0, -1
    loss_acc, loss_n = 0.0, 0
    while step < total:
        if time.time() - t0 > cap_s:
            log(f"[{name}] time cap reached at step {step}")
            break
        lr = lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        offs = torch.randint(0, len(data) - T, (B,), device=device, generator=gen)
        batch = data[offs[:, None] + ar]
        x, y = batch[:, :-1], batch[:, 1:]
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_acc += loss.detach()
        loss_n += 1
        if step == 3:
            torch.cuda.synchronize()
            t_probe = time.time()
        if step == 23 and not args.smoke:
            torch.cuda.synchronize()
            st = (time.time() - t_probe) / 20
            fit = step + int(0.85 * (cap_s - (time.time() - t0)) / st)
            total = max(step + 1, min(planned, fit))
            eval_every = max(10, total // 12)
            log(f"[{name}] {st * 1000:.1f} ms/step, {B * T / st / 1e3:.0f}k tok/s: running {total} steps "
                f"({total / steps_per_epoch:.2f} epochs)")
        if step % eval_every == 0 or step == total:
            v_sum, v_n = window_nll(model, val_ids, T, T // 2, device, autocast=True)
            v = v_sum / v_n
            tl = float(loss_acc) / loss_n
            loss_acc, loss_n = 0.0, 0
            curve.append((step, tl, v))
            last_eval = step
            mark = ""
            if v < best_nll:
                best_nll, best_step, mark = v, step, " *"
                best_state = {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()}
            log(f"[{name}] step {step}/{total} ep {step / steps_per_epoch:.2f} lr {lr:.2e} "
                f"train loss {tl:.4f} (ppl {math.exp(tl):.2f}) val nll {v:.4f} (ppl {math.exp(v):.2f}){mark}")
    if last_eval != step:
        v_sum, v_n = window_nll(model, val_ids, T, T // 2, device, autocast=True)
        v = v_sum / v_n
        curve.append((step, float("nan"), v))
        if v < best_nll:
            best_nll, best_step = v, step
            best_state = {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()}
        log(f"[{name}] final val nll {v:.4f} (ppl {math.exp(v):.2f})")
    torch.cuda.synchronize()
    secs = time.time() - t0
    log(f"[{name}] done: {step} steps in {secs:.1f}s; best val ppl {math.exp(best_nll):.3f} at step {best_step}")
    del model, opt
    torch.cuda.empty_cache()
    return {"name": name, "shape": shape, "cfg": cfg, "state": best_state, "val_nll": best_nll,
            "best_step": best_step, "steps": step, "secs": secs, "params": nparams, "curve": curve,
            "steps_per_epoch": steps_per_epoch}


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    default_corpus = next((p for p in (os.path.join(here, "..", "shared", "corpus"),
                                       os.path.join(here, "..", "..", "shared", "corpus")) if os.path.isdir(p)),
                          "shared/corpus")
    ap.add_argument("--corpus", default=default_corpus, help="folder of .txt files (default: %(default)s)")
    ap.add_argument("--out", default=os.path.join(here, "qwen3-tiny-classics"), help="checkpoint directory")
    ap.add_argument("--fixture-dir", default=os.path.join(here, "..", "tests", "fixtures", "tiny_ppl"))
    ap.add_argument("--dump-heldout", metavar="PATH", help="write the held-out text and exit (no torch needed)")
    ap.add_argument("--shapes", default="h256-l8,h384-l4,h192-l8",
                    help=f"candidates, best validation perplexity wins; from {', '.join(SHAPES)}")
    ap.add_argument("--vocab", type=int, default=8192, help="tokenizer size including the 5 added tokens")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=1024, help="training context")
    ap.add_argument("--max-pos", type=int, default=1024, help="max_position_embeddings")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=6.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--train-seconds", type=float, default=200.0, help="time budget for all candidates")
    ap.add_argument("--eval-ctx", type=int, default=512)
    ap.add_argument("--eval-stride", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--smoke", action="store_true", help="tiny data and 3 steps per candidate: checks the pipeline")
    ap.add_argument("--smoke-steps", type=int, default=3)
    args = ap.parse_args()

    print("command: python3 " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    docs = load_corpus(args.corpus)
    heldout_text = "".join(d["heldout"] for d in docs)
    if args.dump_heldout:
        with open(args.dump_heldout, "w", encoding="utf-8") as f:
            f.write(heldout_text)
        print(f"wrote {len(heldout_text)} characters of held-out text to {args.dump_heldout}")
        return
    for d in docs:
        log(f"{d['name']}: train {len(d['train']):,} val {len(d['val']):,} held-out {len(d['heldout']):,} chars")
    if args.smoke:
        for d in docs:
            for k, n in (("train", 60000), ("val", 6000), ("heldout", 6000)):
                d[k] = d[k][:line_end_after(d[k][:n], 0.999)]
        heldout_text = "".join(d["heldout"] for d in docs)

    import random
    import numpy as np
    import torch
    import transformers
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda"
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"GPU {torch.cuda.get_device_name(0)}")

    # 1. tokenizer
    t = time.time()
    tok, tok_json = train_tokenizer([d["train"] + d["val"] for d in docs], args.vocab)
    ntok = tok.get_vocab_size(with_added_tokens=True)
    tid = {s: tok.token_to_id(s) for s in SPECIAL_TOKENS + PLAIN_ADDED_TOKENS}
    eot, im_end = tid["<|endoftext|>"], tid["<|im_end|>"]
    vocab_size = ((ntok + 63) // 64) * 64
    log(f"tokenizer: {ntok} tokens ({ntok - len(tid)} BPE), added {tid}, model vocab {vocab_size}, "
        f"{time.time() - t:.1f}s")
    for s in ["Hello, world!", "  leading spaces and trailing   ", "12345", "<think>reason</think>answer",
              "It is a truth universally acknowledged"]:
        enc = tok.encode(s, add_special_tokens=False)
        assert tok.decode(enc.ids, skip_special_tokens=False) == s, s
        log(f"  {s!r} -> {enc.ids} {enc.tokens}")

    def encode(text):
        return tok.encode(text, add_special_tokens=False).ids

    # 2. token streams
    t = time.time()
    train_ids = []
    for d in docs:
        for enc in tok.encode_batch(list(line_blocks(d["train"])), add_special_tokens=False):
            train_ids.extend(enc.ids)
        train_ids.append(eot)
    val_ids = []
    for d in docs:
        val_ids.extend(encode(d["val"]))
    data = torch.tensor(train_ids, dtype=torch.long, device=device)
    log(f"train {len(train_ids):,} tokens, val {len(val_ids):,} tokens ({time.time() - t:.1f}s)")

    # 3. train the candidates, keep the best validation checkpoint
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    results = []
    t_train = time.time()
    for i, name in enumerate(names):
        left = args.train_seconds - (time.time() - t_train)
        if left < 15 and results:
            log(f"[{name}] skipped: training budget spent")
            continue
        cap = max(10.0, left / (len(names) - i))
        results.append(train_candidate(name, SHAPES[name], data, val_ids, vocab_size, eot, args, cap, device))
    train_secs = time.time() - t_train
    best = min(results, key=lambda r: r["val_nll"])
    log("candidates (best val ppl): " + ", ".join(
        f"{r['name']} {math.exp(r['val_nll']):.3f} @ step {r['best_step']}/{r['steps']} "
        f"({r['secs']:.0f}s, {r['params']:,} params)" for r in results))
    log(f"chosen: {best['name']}")

    # 4. save as a Hub checkpoint directory
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen3ForCausalLM
    os.makedirs(args.out, exist_ok=True)
    final = Qwen3ForCausalLM(best["cfg"])
    final.load_state_dict(best["state"])
    final = final.to(torch.bfloat16)
    final.save_pretrained(args.out)
    del final
    cfg_path = os.path.join(args.out, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cj = json.load(f)
    if cj.get("dtype", cj.get("torch_dtype")) != "bfloat16":
        cj["dtype" if "dtype" in cj or "torch_dtype" not in cj else "torch_dtype"] = "bfloat16"
        write_json(cfg_path, cj)
    gen_cfg = {"do_sample": True, "eos_token_id": [im_end, eot], "pad_token_id": eot, "repetition_penalty": 1.1,
               "temperature": 0.7, "top_k": 40, "top_p": 0.9, "transformers_version": transformers.__version__}
    write_json(os.path.join(args.out, "generation_config.json"), gen_cfg)
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok_json)
        f.write("\n")

    # the tokenizer must load in transformers and give the same ids as tokenizer.json
    probe_texts = [heldout_text[:4000], "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
                   "<think>reason</think>answer", "  leading spaces and trailing   ", "Mr. Darcy's 10,000 a year!\r\n"]
    hf_tok = None
    for cls in ("Qwen2Tokenizer", "PreTrainedTokenizerFast", "TokenizersBackend"):
        write_json(os.path.join(args.out, "tokenizer_config.json"), tokenizer_config(tid, args.max_pos, cls))
        try:
            cand = AutoTokenizer.from_pretrained(args.out)
            bad = [s for s in probe_texts if cand(s, add_special_tokens=False)["input_ids"] != encode(s)]
            if len(cand) != ntok:
                bad.append(f"len {len(cand)} != {ntok}")
        except Exception as e:  # noqa: BLE001
            bad = [f"{type(e).__name__}: {e}"]
        if not bad:
            hf_tok = cand
            log(f"AutoTokenizer ({type(cand).__name__}, tokenizer_class {cls}) matches tokenizer.json")
            break
        log(f"tokenizer_class {cls}: mismatch {[str(b)[:80] for b in bad]}")
    if hf_tok is None:
        log("WARNING: no tokenizer_class gave the same ids as tokenizer.json")
    try:
        tk = hf_tok or AutoTokenizer.from_pretrained(args.out)
        chat = tk.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False,
                                      add_generation_prompt=True)
        log(f"chat template renders: {chat!r}")
    except Exception as e:  # noqa: BLE001
        log(f"WARNING: chat template: {type(e).__name__}: {e}")
    try:
        gc = GenerationConfig.from_pretrained(args.out)
        log(f"generation_config: eos {gc.eos_token_id} T {gc.temperature} top_p {gc.top_p} top_k {gc.top_k}")
    except Exception as e:  # noqa: BLE001
        log(f"WARNING: generation_config: {type(e).__name__}: {e}")
    st_path = os.path.join(args.out, "model.safetensors")
    size = os.path.getsize(st_path)
    try:
        from safetensors import safe_open
        with safe_open(st_path, framework="pt") as f:
            keys = list(f.keys())
            dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in keys})
        log(f"model.safetensors: {size:,} bytes, {len(keys)} tensors, dtypes {dtypes}, "
            f"lm_head stored: {'lm_head.weight' in keys}")
    except Exception as e:  # noqa: BLE001
        log(f"WARNING: reading safetensors: {type(e).__name__}: {e}")
    log("saved: " + ", ".join(f"{n} ({os.path.getsize(os.path.join(args.out, n)):,} B)"
                              for n in sorted(os.listdir(args.out))))

    # 5. evaluate the saved bf16 files in fp32
    def load_fp32(dev):
        try:
            m, info = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32, attn_implementation="eager",
                                                           output_loading_info=True)
        except TypeError:
            m, info = AutoModelForCausalLM.from_pretrained(args.out, torch_dtype=torch.float32,
                                                           attn_implementation="eager", output_loading_info=True)
        if any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
            log(f"loading info: {info}")
        return m.to(dev).eval()

    model = load_fp32(device)
    C, S = args.eval_ctx, args.eval_stride
    t = time.time()
    held_ids = encode(heldout_text)
    h_sum, h_n = window_nll(model, held_ids, C, S, device)
    tr_text = "".join(train_slice(d) for d in docs)
    tr_ids = encode(tr_text)
    t_sum, t_n = window_nll(model, tr_ids, C, S, device)
    held_ppl, train_ppl = math.exp(h_sum / h_n), math.exp(t_sum / t_n)
    log(f"held-out ppl {held_ppl:.3f} ({h_n:,} scored tokens, C={C} S={S}); train-slice ppl {train_ppl:.3f} "
        f"({t_n:,} tokens); {time.time() - t:.1f}s")
    per_file = {}
    for d in docs:
        s_, n_ = window_nll(model, encode(d["heldout"]), C, S, device)
        per_file[d["name"]] = math.exp(s_ / n_)
    log("held-out ppl per file (each scored alone): " + ", ".join(f"{k} {v:.2f}" for k, v in per_file.items()))
    h2_sum, h2_n = window_nll(model, held_ids, args.ctx, args.ctx // 2, device)
    log(f"held-out ppl at C={args.ctx} S={args.ctx // 2}: {math.exp(h2_sum / h2_n):.3f}")

    # 6. CPU fixture: a held-out slice of ~1,700 tokens cut on line boundaries, scored on the CPU in fp32
    src = next((d for d in docs if "prideprejudice" in d["name"]), docs[0])["heldout"]
    lines = src.splitlines(keepends=True)
    k = next((i for i, line in enumerate(lines) if not line.strip()), 0)  # start at a paragraph
    while k < len(lines) and not lines[k].strip():
        k += 1
    fx_lines, fx_ids = [], []
    target = 300 if args.smoke else 1700
    for line in lines[k:]:
        fx_lines.append(line)
        if len(fx_lines) % 8 == 0 or len(fx_lines) == len(lines) - k:
            fx_ids = encode("".join(fx_lines))
            if len(fx_ids) >= target:
                break
    while fx_lines and not fx_lines[-1].strip():
        fx_lines.pop()
    fx_text = "".join(fx_lines)
    fx_ids = encode(fx_text)
    os.makedirs(args.fixture_dir, exist_ok=True)
    with open(os.path.join(args.fixture_dir, "heldout.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(fx_text)
    cpu_model = load_fp32("cpu")
    f_sum, f_n = window_nll(cpu_model, fx_ids, 128, 64, "cpu")
    g_sum, g_n = window_nll(model, fx_ids, 128, 64, device)
    # greedy ids on the CPU in fp32, by full recomputation (no cache), for an end-to-end check
    g_prompt = encode(PROMPTS[0])
    seq = list(g_prompt)
    with torch.no_grad():
        for _ in range(24):
            lg = cpu_model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
            seq.append(int(torch.argmax(lg)))
    fx = {"model": FIXTURE_MODEL, "text": FIXTURE_TEXT, "ctx": 128, "stride": 64, "n_tokens": len(fx_ids),
          "n_scored": f_n, "nll_mean": f_sum / f_n, "ppl": math.exp(f_sum / f_n),
          "greedy": {"prompt": PROMPTS[0], "prompt_ids": g_prompt, "ids": seq[len(g_prompt):]},
          "ids": fx_ids}
    with open(os.path.join(args.fixture_dir, "expected.json"), "w", encoding="utf-8") as f:
        f.write("{\n")
        items = list(fx.items())
        for i, (k2, v) in enumerate(items):
            f.write(f"  {json.dumps(k2)}: {json.dumps(v, ensure_ascii=False, allow_nan=False)}"
                    f"{',' if i + 1 < len(items) else ''}\n")
        f.write("}\n")
    log(f"fixture: {len(fx_text)} chars, {len(fx_lines)} lines, {len(fx_ids)} tokens; CPU fp32 nll {f_sum / f_n:.6f} "
        f"ppl {math.exp(f_sum / f_n):.4f}; GPU fp32 nll {g_sum / g_n:.6f}; greedy {seq[len(g_prompt):]}")
    del cpu_model

    # 7. samples and summary
    n_new = 16 if args.smoke else 60
    samples = []
    for p in PROMPTS:
        x = torch.tensor([encode(p)], device=device)
        for mode in ("greedy", "sampled"):
            try:
                kw = dict(do_sample=False, repetition_penalty=1.0) if mode == "greedy" else \
                    dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1)
                torch.manual_seed(args.seed)
                out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n_new,
                                     pad_token_id=eot, eos_token_id=[im_end, eot], **kw)
                samples.append((p, mode, tok.decode(out[0, x.shape[1]:].tolist(), skip_special_tokens=False)))
            except Exception as e:  # noqa: BLE001
                samples.append((p, mode, f"<generate failed: {type(e).__name__}: {e}>"))
    H, L, Hq, Hkv, I = best["shape"]
    print("\n======== summary ========")
    print("command: python3 " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"shape: {best['name']}: hidden {H}, layers {L}, heads {Hq}, kv heads {Hkv}, head_dim {args.head_dim}, "
          f"intermediate {I}, vocab {vocab_size} ({ntok} tokens), tied embeddings, rope_theta {args.rope_theta:g}, "
          f"max_position_embeddings {args.max_pos}, training context {args.ctx}")
    print(f"parameters: {best['params']:,}; model.safetensors: {size:,} bytes")
    print(f"training: {train_secs:.1f}s for {len(results)} candidates; chosen {best['secs']:.1f}s, best val at step "
          f"{best['best_step']} of {best['steps']} ({best['best_step'] / best['steps_per_epoch']:.2f} epochs of "
          f"{best['steps_per_epoch'] * args.batch * args.ctx:,} tokens)")
    for r in results:
        print(f"  {r['name']}: val ppl {math.exp(r['val_nll']):.3f}, {r['params']:,} params, curve "
              + " ".join(f"{s}:{math.exp(v):.2f}" for s, _, v in r["curve"]))
    print(f"held-out ppl (C={C}, S={S}, fp32 from the saved bf16 files): {held_ppl:.3f} over {h_n:,} tokens")
    print(f"train-slice ppl (same protocol, {t_n:,} tokens): {train_ppl:.3f}")
    print(f"fixture: n_scored {f_n}, nll_mean {f_sum / f_n:.6f}, ppl {math.exp(f_sum / f_n):.4f}")
    for p, mode, s in samples:
        print(f"--- {mode}: {p!r}\n{p}{s}")
    log("done")


if __name__ == "__main__":
    main()
