#!/usr/bin/env bash
# Issue benchmark of automatic stopping on a GPU: `dip eval` denoise sigma=25, 128² crops of the five
# built-in photographs, the recipe's 3000 steps vs --stop auto, seeds 0,1,2. One process per image,
# all at once (a 128² fit leaves the GPU mostly idle); seeds one after the other, a CSV each, so a
# run cut short keeps what finished. Needs the native library built (check.sh).
set -uo pipefail
OUT="${OUT:-gpu-out}"; mkdir -p "$OUT/eval"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MPLBACKEND=Agg PYTHONPATH="$PWD"
PY="${PYTHON:-python3}"
SIZE="${SIZE:-128}" STEPS="${STEPS:-3000}" SEEDS="${SEEDS:-0 1 2}" LIMIT="${LIMIT:-330}"
start=$(date +%s)
for name in astronaut chelsea coffee rocket immunohistochemistry; do
  (for seed in $SEEDS; do
     timeout $(( LIMIT - ($(date +%s) - start) )) $PY -m dip eval --cases denoise25 --builtin "$name" \
       --size "$SIZE" --steps "$STEPS" --seeds "$seed" --device cuda --csv "$OUT/eval/${name}_$seed.csv" \
       --plots "$OUT/eval/plots" >> "$OUT/eval/$name.log" 2>&1 || echo "$name seed $seed: failed or cut" >> "$OUT/eval/$name.log"
   done) &
done
wait
echo "eval: $(( $(date +%s) - start )) s"
tail -n 4 "$OUT"/eval/*.log
tar -czf "$OUT/eval.tar.gz" -C "$OUT" eval && rm -rf "$OUT/eval"
