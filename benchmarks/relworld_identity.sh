#!/usr/bin/env bash
# Issue 15's identity check on the full benchmark: RelWorld written out as a manifest
# (export-relworld with everything configs/benchmark.yaml draws: 3 method seeds, every method's
# and every suite's image counts, the six held-out styles as test domains), then the same
# benchmark on world: {vocabulary: relworld, data: that manifest}, then the two leaderboards
# compared cell by cell. Resumes like any run: rerun the script to finish an interrupted one.
#
#   bash benchmarks/relworld_identity.sh            # after: relsafe run configs/benchmark.yaml --out runs/benchmark
set -euo pipefail
EXPORT=${EXPORT:-runs/relworld-export}
OUT=${OUT:-runs/benchmark-manifest}
REF=${REF:-runs/benchmark}
if [ ! -f "$EXPORT/manifest.csv" ]; then
  relsafe data export-relworld --out "$EXPORT" --split test --per-tuple 8 \
    --styles plain,pastel,vivid --ood-styles sketch,night,noisy,clutter,grayscale,extreme_scale \
    --edit-seeds 3 --edit-per-tuple 24 --retain-per-tuple 6 --quad-per-pair 64 \
    --val-per-pair 16 --val-per-tuple 8 --test-per-pair 16 --no-progress
fi
relsafe run configs/benchmark.yaml --out "$OUT" \
  --set world.vocabulary=relworld --set "world.data=$EXPORT/manifest.csv"
python benchmarks/compare_leaderboards.py "$REF/leaderboard.md" "$OUT/leaderboard.md"
python benchmarks/compare_results.py "$REF" "$OUT" --tol 0
