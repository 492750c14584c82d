#!/usr/bin/env bash
# Reproduce the in-context family (issue 12): the shipped pixel MVG meditok-mvg-small, its baselines
# (U-Net specialists), the Table-5 "isolated" model, the token-space GPT, the evaluation and the bundle.
#
#   bash scripts/train_incontext.sh small      # meditok-mvg-small (1300 + 1300 + 1300 steps; ~55-100 min on 1 shared CPU thread)
#   bash scripts/train_incontext.sh unets      # U-Net specialists: DRIVE vessels, denoising, inpainting (~20 min)
#   bash scripts/train_incontext.sh isolated   # the same MVG on DRIVE alone, same DRIVE episodes (~20 min)
#   bash scripts/train_incontext.sh token      # MedITok-token GPT on the same DRIVE episodes (~30 min)
#   bash scripts/train_incontext.sh eval       # benchmarks/incontext.py -> benchmarks/results/incontext/ (~20 min)
#   bash scripts/train_incontext.sh table5     # the isolated model on DRIVE / CHASE (same canvases, seed 0)
#   bash scripts/train_incontext.sh tokeneval  # token vs pixel models, first DRIVE / CHASE case (~2-4 min)
#   bash scripts/train_incontext.sh prompts    # prompt selection position / random / nearest on 6 CHASE cases
#   bash scripts/train_incontext.sh bundle     # copy runs/incontext/mvg_small/final into meditok/weights/
#   bash scripts/train_incontext.sh all
#
# Every training is resumable (re-run the same stage after an interruption). On a shared machine wrap
# each stage in the CPU lock, e.g. flock /work/runs/cpu.lock timeout 3550 bash scripts/train_incontext.sh small
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs/incontext}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

train() {  # train CONFIG NAME: skipped when the final model exists
  if [ -f "$RUNS/$2/final/config.json" ]; then echo "$RUNS/$2/final exists, skipping"; return; fi
  meditok incontext train "configs/incontext/$1.yaml" --data.root "$DATA" --loop.output_dir "$RUNS/$2"
}

case "${1:-all}" in
  small)    # as shipped: 1300 steps on a 1300-step cosine, then resumed with loop.steps 2600 and 3900 (the
            # scheduler follows the longer cosine from each resume on; the third phase was added after the
            # 2600-step model missed the CHASE target by 0.9 %, see configs/incontext/small.yaml)
            if [ ! -f "$RUNS/mvg_small/final/config.json" ] || ! grep -q '"steps": 3900' "$RUNS/mvg_small/final/config.json"; then
              for n in 1300 2600 3900; do
                meditok incontext train configs/incontext/small.yaml --data.root "$DATA" \
                  --loop.output_dir "$RUNS/mvg_small" --loop.steps "$n"
              done
            fi ;;
  unets)    train unet_drive unet_drive; train unet_denoise unet_denoise; train unet_inpaint unet_inpaint ;;
  isolated) # two phases like the unified model: 390 steps, then resumed to 780 (its DRIVE episodes)
            for n in 390 780; do
              meditok incontext train configs/incontext/isolated_drive.yaml --data.root "$DATA" \
                --loop.output_dir "$RUNS/mvg_isolated_drive" --loop.steps "$n"
            done ;;
  token)    train token_drive token_drive ;;
  eval)     python benchmarks/incontext.py --data "$DATA" --runs "$RUNS" --only main --no-ceiling --threads 1 ;;
  table5)   meditok incontext eval --model "$RUNS/mvg_isolated_drive/final" --label MVG-small-isolated-DRIVE-only \
              --sets drive chase --threads 1 --out benchmarks/results/incontext/table5 --overwrite ;;
  tokeneval) meditok incontext eval --model "$RUNS/mvg_small/final" --label MVG-small-unified \
              --model "$RUNS/mvg_isolated_drive/final" --label MVG-small-isolated --model "$RUNS/token_drive/final" \
              --label MVG-token-DRIVE-only --sets drive chase --restoration --max-cases 1 --threads 1 \
              --out benchmarks/results/incontext/token_vs_pixel --overwrite ;;
  prompts)  meditok incontext eval --model "$RUNS/mvg_small/final" --label MVG-small-unified \
              --specialist chase="$RUNS/unet_drive/final" --sets chase --restoration \
              --strategy position random nearest --max-cases 6 --threads 1 \
              --out benchmarks/results/incontext/prompts --overwrite ;;
  bundle)   meditok incontext bundle "$RUNS/mvg_small/final" meditok/weights/meditok-mvg-small \
              --name meditok-mvg-small --results benchmarks/results/incontext/incontext_main.json --overwrite ;;
  all)      for s in small unets isolated eval table5 bundle; do bash "$0" "$s"; done ;;
  *) echo "unknown stage $1 (small unets isolated token eval table5 tokeneval prompts bundle all)" >&2; exit 2 ;;
esac
