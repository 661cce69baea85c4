#!/usr/bin/env bash
# Tokenizer speed, nano against the HF Rust tokenizer, on the same file in the same run:
#   tests/tokenizer/speed.sh NODE_MODULES_PARENT [TEXT_FILE]
# (NODE_MODULES_PARENT: where `npm install tokenizers@0.23.2` was run.) nano's figure is encode time
# only, best of 3, as hf_speed.mjs measures it; both load the official Qwen3 tokenizer.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
npm_dir=${1:?usage: $0 NODE_MODULES_PARENT [TEXT_FILE]}
text=${2:-../shared/corpus/kjv.txt}
for i in 1 2 3; do ./nano -m tests/tokenizer/qwen3 --tokenize-file "$text" 2>&1 >/dev/null | grep -o '[0-9.]* ms ([0-9.]* MB/s)'; done |
    sort -n | head -1 | sed "s|^|nano:          $(./nano -m tests/tokenizer/qwen3 --tokenize-file "$text" 2>/dev/null | wc -w) ids, best of 3 |"
node tests/tokenizer/hf_speed.mjs "$npm_dir" tests/tokenizer/qwen3/tokenizer.json "$text"
