#!/usr/bin/env bash
# Rebuild the default bundle (src/danna_sep/pretrained/default) from nothing:
#   1. the training corpus: 120 generated 30 s songs, seed 0 (96 in train/, 24 in test/);
#   2. the three members of configs/default/, trained side by side, one CPU thread each
#      (validated on the corpus' test/ tracks, which they never train on);
#   3. export with blend weights fitted on those same test/ tracks;
#   4. the quality table on a fresh 24-song split of seed 1, which nothing above saw.
#
#   bash recipes/default.sh [WORK_DIR [BUNDLE_DIR]]
#
# WORK_DIR defaults to work/default, BUNDLE_DIR to WORK_DIR/bundle; to replace the shipped
# bundle, pass src/danna_sep/pretrained/default (with FORCE=1 when it exists). Every step
# resumes: run the same command again after an interruption. On 2 CPU cores the whole
# recipe takes about 2 h 25 min (see README); with a CUDA GPU, training runs there.
# TRACKS, SECONDS_PER_TRACK, CONFIGS and QUALITY_TRACKS override the corpus size, the config folder
# and the quality split (the tests run the whole script small).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-work/default}"
bundle="${2:-$work/bundle}"
configs="${CONFIGS:-$here/configs/default}"
tracks="${TRACKS:-120}"
seconds="${SECONDS_PER_TRACK:-30}"
quality_tracks="${QUALITY_TRACKS:-24}"
members=(x_umx unet_attn demucs_split)

echo "== corpus: $work/corpus" >&2
danna-sep corpus "$work/corpus" --tracks "$tracks" --seconds "$seconds" --seed 0 --workers 2

echo "== training: ${members[*]} in $work/runs (logs: $work/runs/NAME.log)" >&2
mkdir -p "$work/runs"
pids=()
for name in "${members[@]}"; do
    run="$work/runs/$name"
    if [ -f "$run/checkpoints/last.pt" ]; then mode=--resume; else mode=--force; fi
    danna-sep train "$configs/$name.json" --data "$work/corpus" --out "$run" "$mode" \
        > "$work/runs/$name.log" 2>&1 &
    pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        echo "training ${members[$i]} failed: see $work/runs/${members[$i]}.log" >&2
        failed=1
    fi
done
[ "$failed" = 0 ] || exit 1
grep -h "epoch .*validation" "$work"/runs/*.log | tail -n 6 >&2 || true

echo "== export: $bundle (blend fitted on $work/corpus/test)" >&2
if [ -f "$bundle/bundle.json" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "$bundle exists: kept (FORCE=1 to export again)" >&2
else
    danna-sep export "${members[@]/#/$work/runs/}" -o "$bundle" --fit "$work/corpus" --force
fi

echo "== quality on a fresh test split (seed 1)" >&2
python "$here/benchmarks/quality.py" --bundle "$bundle" --data "$work/quality-seed1" --json "$work/quality.json" --force \
    --tracks "$quality_tracks" --seconds "$seconds"
