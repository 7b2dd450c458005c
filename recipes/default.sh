#!/usr/bin/env bash
# Rebuild the default bundle (src/danna_sep/pretrained/default) from nothing:
#   1. the training corpus: 150 produced 30 s songs, seed 0 (120 in train/, 30 in test/):
#      five genres, several soundfonts and recorded kits, effect chains per part;
#   2. stage 1: the three members of configs/default/, trained side by side from random
#      weights, one CPU thread each (validated on the corpus' test/ tracks, which they
#      never train on), exported as WORK_DIR/stage1;
#   3. stage 2: each member fine-tuned from its stage-1 weights with
#      configs/default/finetune/ (lower learning rate, fewer epochs), exported as
#      WORK_DIR/stage2 with each member's weights halfway between stage 1 and stage 2
#      (ALPHA, the stage-2 share, default 0.5: `danna-sep export --interpolate`);
#   4. stage 3: the members with a config in configs/default/closs/ (the X-UMX) fine-tuned
#      from WORK_DIR/stage2 with Danna-Sep's combination loss (two threads), then again for
#      each later round with a config in configs/default/closs2/ and closs3/, each from the
#      round before's best checkpoint (another seed each); the others are carried over from
#      stage 2 as they are;
#   5. export: each member's last stage-3 round at its share against stage 2 (ALPHA3_X_UMX,
#      default 1; ALPHA3_UNET_ATTN, default 0.5, for a U-Net given a stage-3 config;
#      ALPHA3 sets both), with blend weights
#      fitted on the corpus' test/ tracks;
#   6. the quality tables: a fresh 24-song split of seed 1, which nothing above saw, and
#      the real MIR-1K clips of shared/realval (if present; never trained on).
#
#   bash recipes/default.sh [WORK_DIR [BUNDLE_DIR]]
#
# WORK_DIR defaults to work/default, BUNDLE_DIR to WORK_DIR/bundle; to replace the shipped
# bundle, pass src/danna_sep/pretrained/default (with FORCE=1 when it exists). Every step
# resumes: run the same command again after an interruption. STAGE1_BUNDLE=DIR skips
# stage 1 and fine-tunes that bundle's members instead; STAGE2_BUNDLE=DIR skips stages 1
# and 2 and starts stage 3 from that bundle (how the shipped weights were made: see
# README). TRACKS, SECONDS_PER_TRACK, CONFIGS, FINETUNE_CONFIGS, CLOSS_CONFIGS,
# CLOSS2_CONFIGS, CLOSS3_CONFIGS, QUALITY_TRACKS and REALVAL override the corpus size, the config folders, the quality
# split and the real clips (the tests run the whole script small).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-work/default}"
bundle="${2:-$work/bundle}"
configs="${CONFIGS:-$here/configs/default}"
finetune="${FINETUNE_CONFIGS:-$configs/finetune}"
closs="${CLOSS_CONFIGS:-$configs/closs}"
closs2="${CLOSS2_CONFIGS:-$configs/closs2}"
closs3="${CLOSS3_CONFIGS:-$configs/closs3}"
tracks="${TRACKS:-150}"
seconds="${SECONDS_PER_TRACK:-30}"
quality_tracks="${QUALITY_TRACKS:-24}"
alpha="${ALPHA:-0.5}"
alpha3_x_umx="${ALPHA3_X_UMX:-${ALPHA3:-1}}"
alpha3_unet_attn="${ALPHA3_UNET_ATTN:-${ALPHA3:-0.5}}"
realval="${REALVAL:-$here/../shared/realval}"
members=(x_umx unet_attn demucs_split)
files=(00-xumx 01-unet_attn 02-demucs_split)

echo "== corpus: $work/corpus" >&2
danna-sep corpus "$work/corpus" --tracks "$tracks" --seconds "$seconds" --seed 0 --workers 2

# train_one STAGE CONFIG_DIR INDEX [WEIGHTS]: member INDEX in the background (its pid in
# $! as usual), resuming when its run exists, kept when it finished (its summary.json says
# so). WEIGHTS: a bundle folder (the member's file in it) or a training run folder (its best
# checkpoint).
train_one() {
    local stage="$1" config_dir="$2" i="$3" weights="${4:-}"
    local name="${members[$i]}" run="$work/$stage/${members[$i]}" args=()
    mkdir -p "$work/$stage"
    if grep -qs '"finished": true' "$run/summary.json"; then
        echo "$run finished: kept" >&2
        true &  # a pid to wait for, as for a run
        return
    elif [ -f "$run/checkpoints/last.pt" ]; then
        args=(--resume)
    elif [ -f "$weights/bundle.json" ]; then
        args=(--force --weights "$weights/${files[$i]}.safetensors")
    else
        args=(--force)
        [ -z "$weights" ] || args+=(--weights "$weights")
    fi
    danna-sep train "$config_dir/$name.json" --data "$work/corpus" --out "$run" "${args[@]}" \
        > "$work/$stage/$name.log" 2>&1 &
}

# train_members STAGE CONFIG_DIR [WEIGHTS_DIR]: the three members side by side.
train_members() {
    local stage="$1" config_dir="$2" weights="${3:-}"
    echo "== $stage: ${members[*]} in $work/$stage (logs: $work/$stage/NAME.log)" >&2
    local pids=() i
    for i in "${!members[@]}"; do
        train_one "$stage" "$config_dir" "$i" "$weights"
        pids+=($!)
    done
    local failed=0
    for i in "${!pids[@]}"; do
        if ! wait "${pids[$i]}"; then
            echo "training ${members[$i]} ($stage) failed: see $work/$stage/${members[$i]}.log" >&2
            failed=1
        fi
    done
    [ "$failed" = 0 ] || exit 1
    grep -h "epoch .*validation" "$work/$stage"/*.log | tail -n 6 >&2 || true
}

# export_bundle OUT ARGS...: `danna-sep export ARGS -o OUT`, unless OUT exists (FORCE=1 replaces it).
export_bundle() {
    local out="$1"
    shift
    if [ -f "$out/bundle.json" ] && [ "${FORCE:-0}" != 1 ]; then
        echo "$out exists: kept (FORCE=1 to export again)" >&2
    else
        danna-sep export "$@" -o "$out" --force
    fi
}

if [ -n "${STAGE2_BUNDLE:-}" ]; then
    stage2="$STAGE2_BUNDLE"
    echo "== stages 1 and 2: taken from $stage2" >&2
else
    if [ -n "${STAGE1_BUNDLE:-}" ]; then
        stage1="$STAGE1_BUNDLE"
        echo "== stage 1: taken from $stage1" >&2
    else
        stage1="$work/stage1"
        train_members runs "$configs"
        if [ ! -f "$stage1/bundle.json" ]; then
            danna-sep export "${members[@]/#/$work/runs/}" -o "$stage1" --blend equal --force -q
        fi
    fi
    train_members finetune "$finetune" "$stage1"
    stage2="$work/stage2"
    echo "== stage 2 export: $stage2 (stage 1 + $alpha x (stage 2 - stage 1))" >&2
    export_bundle "$stage2" "${members[@]/#/$work/finetune/}" --fit "$work/corpus" -q \
        --interpolate "$stage1" --alpha "$alpha"
fi

# train_wait STAGE CONFIG_DIR INDEX WEIGHTS: train_one, waited for.
train_wait() {
    local stage="$1" name="${members[$3]}"
    echo "== $stage: $name in $work/$stage (log: $work/$stage/$name.log)" >&2
    train_one "$@"
    if ! wait $!; then
        echo "training $name ($stage) failed: see $work/$stage/$name.log" >&2
        exit 1
    fi
    grep -h "epoch .*validation" "$work/$stage/$name.log" | tail -n 2 >&2 || true
}

# Stage 3: the rounds of the combination loss, one member at a time on two threads (side by
# side on one thread each, the X-UMX and the U-Net each took twice as long per step: README).
# A member with a config in a round's folder trains there from its previous round (the first
# from stage 2); one with none is carried over from stage 2 (a bundle's weights file is an
# export input).
rounds=(closs closs2 closs3)
round_configs=("$closs" "$closs2" "$closs3")
inputs=()
alphas3=()  # each input's share against stage 2 (a carried member is stage 2's own: any share keeps it)
for i in "${!members[@]}"; do
    share="alpha3_${members[$i]}"
    alphas3+=("${!share:-1}")
    previous="$stage2"
    for r in "${!rounds[@]}"; do
        if [ -f "${round_configs[$r]}/${members[$i]}.json" ]; then
            train_wait "${rounds[$r]}" "${round_configs[$r]}" "$i" "$previous"
            previous="$work/${rounds[$r]}/${members[$i]}"
        fi
    done
    if [ "$previous" = "$stage2" ]; then
        inputs+=("$stage2/${files[$i]}.safetensors")
    else
        inputs+=("$previous")
    fi
done

shares="$(IFS=,; echo "${alphas3[*]}")"
echo "== export: $bundle (stage 2 + ($shares) x (stage 3 - stage 2), blend fitted on $work/corpus/test)" >&2
export_bundle "$bundle" "${inputs[@]}" --fit "$work/corpus" --interpolate "$stage2" --alpha "$shares"

echo "== quality on a fresh test split (seed 1) and on real clips ($realval)" >&2
if [ -f "$work/quality.json" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "$work/quality.json exists: kept (FORCE=1 to measure again)" >&2
else
    if [ -d "$realval" ]; then real=("--realval" "$realval"); else real=("--realval" "none"); fi
    python "$here/benchmarks/quality.py" --bundle "$bundle" --data "$work/quality-seed1" --json "$work/quality.json" \
        --force --tracks "$quality_tracks" --seconds "$seconds" "${real[@]}"
fi
