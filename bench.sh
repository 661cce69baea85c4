#!/usr/bin/env bash
# Measures nano's prefill and decode speed with nano --bench and writes the results and a plot.
#   ./bench.sh -m DIR [-m DIR ...] [options] [-- nano flags]     a checkpoint you have (only read)
#   ./bench.sh --preset qwen3-0.6b,qwen3-8b [options]            random weights at real Qwen shapes
# Options (each passed to nano --bench; lists are comma separated and swept):
#   -p LIST   prefill tests (default 512)          -n LIST   decode tests (default 128)
#   -d LIST   context depths (default 0)            -r N      repetitions after a warm-up (default 5)
#   --kv LIST KV formats (default: the model's)     --wo-split LIST   GPU o_proj splits (default: the engine's)
#   --quick   -p 128 -n 32 -d 0,256 -r 2 and, with no -m or --preset, --preset qwen3-0.6b
#   -o DIR    where results.md, results.csv, results.json and results.svg go (default bench-results)
#   --cache DIR  where --preset checkpoints are written (default ~/.cache/nano-bench); bench.sh writes
#             only directories it made there and refuses any directory holding files it did not write
#   --        the rest goes to nano --bench as is (e.g. --ref, -t 4, -b 256)
# Progress and an ETA go to stderr; nano's own messages are shown as they come.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
nano=$here/nano
MARK=.written-by-nano-bench  # in a preset directory: the files bench.sh wrote there, one a line

die() { echo "bench.sh: $*" >&2; exit 1; }
need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1: missing value"; }

models=() presets="" out=bench-results cache=${XDG_CACHE_HOME:-$HOME/.cache}/nano-bench quick=0
pp="" tg="" depth="" reps="" kv="" split="" extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        -m|--model) need "$@"; models+=("$2"); shift 2 ;;
        --preset) need "$@"; presets=$2; shift 2 ;;
        -p) need "$@"; pp=$2; shift 2 ;;
        -n) need "$@"; tg=$2; shift 2 ;;
        -d) need "$@"; depth=$2; shift 2 ;;
        -r) need "$@"; reps=$2; shift 2 ;;
        --kv) need "$@"; kv=$2; shift 2 ;;
        --wo-split) need "$@"; split=$2; shift 2 ;;
        -o) need "$@"; out=$2; shift 2 ;;
        --cache) need "$@"; cache=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
if [ $quick = 1 ]; then
    pp=${pp:-128} tg=${tg:-32} depth=${depth:-0,256} reps=${reps:-2}
    [ ${#models[@]} -gt 0 ] || [ -n "$presets" ] || presets=qwen3-0.6b
fi
[ ${#models[@]} -gt 0 ] || [ -n "$presets" ] || die "nothing to measure: pass -m DIR or --preset NAME (see --help)"
for m in "${models[@]}"; do
    [ -d "$m" ] || die "-m $m: not a directory"
    [ -f "$m/config.json" ] || die "-m $m: no config.json (a Hugging Face checkpoint directory is expected)"
done
known=$(sed -n 's/^    "\([a-z0-9.-]*\)": (.*/\1/p' "$here/tests/random_checkpoint.py" | tr '\n' ' ')
IFS=, read -r -a preset_list <<< "$presets"
for p in "${preset_list[@]}"; do
    case " $known" in *" $p "*) ;; *) die "--preset $p: unknown (one of: $known)" ;; esac
done
mkdir -p "$out" || die "-o $out: cannot create the directory"
[ -x "$nano" ] || make -C "$here" -s nano >&2 || die "building nano failed"

# A preset's directory holds only what bench.sh wrote: the files listed in its mark. Anything else
# there (a config.json, a model someone put there) and bench.sh stops without touching the directory.
preset_dir() {
    local p=$1 dir=$cache/$1
    if [ -e "$dir" ]; then
        [ -d "$dir" ] || die "--preset $p: $dir exists and is not a directory; bench.sh leaves it alone"
        [ -f "$dir/$MARK" ] || die "--preset $p: $dir holds files bench.sh did not write (no $MARK); it is left untouched: choose another --cache"
        local f
        for f in "$dir"/* "$dir"/.[!.]*; do
            [ -e "$f" ] || continue
            f=${f##*/}
            [ "$f" = "$MARK" ] || grep -qxF "$f" "$dir/$MARK" \
                || die "--preset $p: $dir holds $f, which bench.sh did not write; it is left untouched: choose another --cache"
        done
        [ -f "$dir/model.safetensors" ] || die "--preset $p: $dir lacks model.safetensors; remove the directory to have it written again"
        return
    fi
    mkdir -p "$cache"
    local tmp
    tmp=$(mktemp -d "$cache/.writing-$p.XXXXXX")
    echo "bench.sh: writing a random-weight $p checkpoint into $dir" >&2
    python3 "$here/tests/random_checkpoint.py" --preset "$p" "$tmp" >&2 || { rm -rf -- "$tmp"; die "--preset $p: writing the checkpoint failed"; }
    (cd "$tmp" && ls -A) > "$tmp/$MARK"
    mv -T -- "$tmp" "$dir" || die "--preset $p: could not move the checkpoint into $dir"
}
dirs=("${models[@]}")
for p in "${preset_list[@]}"; do preset_dir "$p"; dirs+=("$cache/$p"); done

args=(--bench -o csv --save "$out/results")
for d in "${dirs[@]}"; do args+=(-m "$d"); done
[ -n "$pp" ] && args+=(-p "$pp")
[ -n "$tg" ] && args+=(-n "$tg")
[ -n "$depth" ] && args+=(-d "$depth")
[ -n "$reps" ] && args+=(-r "$reps")
[ -n "$kv" ] && args+=(--kv "$kv")
[ -n "$split" ] && args+=(--wo-split "$split")
args+=("${extra[@]}")

# Rows to expect: models x formats x splits x depths x (prefill tests + decode tests), 0 tests left out.
count() { local IFS=,; set -- ${1:-$2}; echo $#; }
nonzero() { local IFS=, n=0 v; for v in ${1:-$2}; do [ "$v" = 0 ] || n=$((n + 1)); done; echo $n; }
total=$(( ${#dirs[@]} * $(count "$kv" x) * $(count "$split" x) * $(count "$depth" 0) * ($(nonzero "$pp" 512) + $(nonzero "$tg" 128)) ))

echo "bench.sh: $nano ${args[*]}" >&2
start=$(date +%s) done=0
set +e
"$nano" "${args[@]}" | {
    read -r header || exit 0
    while IFS= read -r row; do
        done=$((done + 1))
        el=$(( $(date +%s) - start ))
        eta=$(( done < total ? el * (total - done) / done : 0 ))
        echo "$row" | awk -F, -v d=$done -v t=$total -v el=$el -v eta=$eta '{
            printf "bench.sh: [%d/%d] %s, %s KV, %s: %.2f tok/s (%ds elapsed, ETA %dm%02ds)\n", d, t, $1, $6, $9, $15, el, eta / 60, eta % 60 }' >&2
    done
}
status=("${PIPESTATUS[@]}")
set -e
[ "${status[0]}" = 0 ] || die "nano --bench failed (exit status ${status[0]}; its message is above); no results written"
echo "bench.sh: wrote $out/results.md, results.csv, results.json and results.svg" >&2
cat "$out/results.md"
