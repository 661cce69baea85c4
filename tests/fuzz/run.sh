#!/bin/sh
# Runs one fuzz target from its seeds (and its dictionary, if any) for SECONDS, growing the corpus in
# build/corpus_NAME; extra arguments go to libFuzzer. Used by `make fuzz` and `make test`.
#   tests/fuzz/run.sh NAME SECONDS [libFuzzer flags]
set -e
name=$1 seconds=$2
shift 2
mkdir -p build/corpus_$name
max_len=8192
[ "$name" = tokenizer ] && max_len=16384
dict=tests/fuzz/seeds/$name.dict
[ -f "$dict" ] && set -- -dict="$dict" "$@"
exec build/fuzz_$name -max_len=$max_len -timeout=10 -max_total_time="$seconds" -print_final_stats=1 "$@" \
    build/corpus_$name tests/fuzz/seeds/$name
