#!/usr/bin/env bash
# Full-scale simulator runs with both cores busy with other work (issue 26's "10 runs with the
# machine loaded"): two CPU-bound loops at the simulator's own priority run for the whole
# series, and seeds FIRST..LAST run one after another with the given release binary.
#
#   cargo build --release -p ballast-sim
#   cp target/release/ballast-sim /tmp/ballast-sim   # a rebuild must not change it mid-series
#   sim/loaded-runs.sh /tmp/ballast-sim 1 10 [OUT_DIR] [extra fleet flags...]
#
# Each seed's report goes to OUT_DIR/seed-N (default target/loaded-runs); one line per seed
# ("seed N rc=R checks=... seconds=S") is appended to OUT_DIR/series.log. Nothing else should
# run on the machine meanwhile: a run takes 20-26 minutes loaded.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 BINARY FIRST_SEED LAST_SEED [OUT_DIR] [fleet flags...]" >&2
    exit 2
fi
binary=$(realpath "$1")
first=$2
last=$3
out=${4:-target/loaded-runs}
shift $(( $# < 4 ? $# : 4 ))
mkdir -p "$out"
out=$(realpath "$out")

loads=()
for _ in 1 2; do
    python3 -c 'while True: pass' &
    loads+=($!)
done
trap 'kill "${loads[@]}" 2>/dev/null || true' EXIT

echo "series $(date -u +%FT%TZ): $binary seeds $first-$last, two busy loops" >> "$out/series.log"
for seed in $(seq "$first" "$last"); do
    started=$(date +%s)
    set +e
    "$binary" fleet --scale full --provider-processes --seed "$seed" \
        --out "$out/seed-$seed" "$@" > "$out/seed-$seed.log" 2>&1
    rc=$?
    set -e
    summary=$(grep -Eo '[0-9]+ invariant checks, [0-9]+ violations' "$out/seed-$seed.log" | tail -1 || true)
    echo "seed $seed rc=$rc checks=\"$summary\" seconds=$(( $(date +%s) - started ))" >> "$out/series.log"
done
