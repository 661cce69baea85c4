#!/usr/bin/env bash
# Measures nano's prefill and decode speed on a random-weight checkpoint at a real Qwen shape.
#   ./bench.sh [--preset qwen3-0.6b] [--pp 128] [--tg 32] [--runs 3] [--dir DIR] [-- extra nano flags]
# Writes the checkpoint (tests/random_checkpoint.py) into DIR if it is not there, runs nano --runs
# times and prints a markdown table (mean ± std) and the same numbers as CSV on stdout.
set -euo pipefail
cd "$(dirname "$0")"

preset=qwen3-0.6b pp=128 tg=32 runs=3 dir=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --preset) preset=$2; shift 2 ;;
        --pp) pp=$2; shift 2 ;;
        --tg) tg=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 1 ;;
    esac
done
dir=${dir:-/tmp/nano-bench-$preset}
[ -x ./nano ] || make -s nano
[ -f "$dir/model.safetensors" ] || python3 tests/random_checkpoint.py --preset "$preset" "$dir" >&2
vocab=$(sed -n 's/.*"vocab_size": *\([0-9]*\).*/\1/p' "$dir/config.json")
# A fixed pseudo-random prompt of pp ids below 150000 (every Qwen vocabulary holds those).
prompt=$(awk -v n="$pp" -v v="$vocab" 'BEGIN { x = 12345; for (i = 0; i < n; i++) { x = (x * 1103515245 + 12345) % 2147483648; printf "%d ", x % (v < 150000 ? v : 150000) } }')

csv="run,preset,pp,tg,prefill_tok_s,decode_tok_s,flags"
for r in $(seq 1 "$runs"); do
    stats=$(./nano -m "$dir" --prompt-ids "$prompt" -n "$tg" --temp 0 --print-ids "${extra[@]}" 2>&1 >/dev/null | grep '^nano: load')
    pre=$(echo "$stats" | sed -n 's/.*| prompt [0-9]* tok, [0-9.]* ms, \([0-9.]*\) tok\/s.*/\1/p')
    dec=$(echo "$stats" | sed -n 's/.*| generated [0-9]* tok, [0-9.]* ms, \([0-9.]*\) tok\/s.*/\1/p')
    csv+=$'\n'"$r,$preset,$pp,$tg,$pre,$dec,${extra[*]:-}"
done

echo "| preset | flags | pp$pp prefill tok/s | tg$tg decode tok/s |"
echo "|---|---|---|---|"
echo "$csv" | awk -F, 'NR > 1 { n++; p += $5; pp += $5 * $5; d += $6; dd += $6 * $6; preset = $2; flags = $7 }
    END { mp = p / n; md = d / n; vp = pp / n - mp * mp; vd = dd / n - md * md; sp = sqrt(vp > 0 ? vp : 0); sd = sqrt(vd > 0 ? vd : 0);
          printf "| %s | %s | %.2f ± %.2f | %.2f ± %.2f |\n", preset, flags, mp, sp, md, sd }'
echo
echo "$csv"
