#!/usr/bin/env bash
# Reproduces the bundled meditok-small checkpoint on a 2-core CPU (about 45 minutes of
# training): corpus → stage 1 → stage 2 → meditok/weights/meditok-small.
# CPU-budget deviations from the paper's recipe, stated in the checkpoint's config.json:
# LPIPS and the GAN term are off (--loss.lpips 0 --loss.gan 0; on this machine they cost
# ~4.5x the step time, benchmarks/results/train_speed.md), drop-path 0, peak lr 1e-3 in stage 1.
set -euo pipefail
cd "$(dirname "$0")/.."
meditok data build-corpus --shared ../shared/data --out corpus --workers 2
COMMON="--data.manifest corpus/manifest.csv --loss.lpips 0 --loss.gan 0 --model.drop_path 0 --data.batch_size 16"
meditok tokenizer train configs/stage1_small.yaml $COMMON --optim.lr 1e-3 --steps 3000 --ckpt_every 250 \
  --val_every 500 --output_dir runs/stage1_small
meditok tokenizer train configs/stage2_small.yaml $COMMON --model.init_from runs/stage1_small/final \
  --optim.lr 5e-4 --steps 1500 --ckpt_every 250 --val_every 500 --output_dir runs/stage2_small
# ablation used in the evaluation: stage 2 with cosine instead of contrastive alignment
meditok tokenizer train configs/stage2_small.yaml $COMMON --model.init_from runs/stage1_small/final \
  --align.mode cosine --optim.lr 5e-4 --steps 1500 --ckpt_every 500 --val_every 750 \
  --output_dir runs/stage2_small_cosine
python scripts/bundle_small.py runs/stage2_small/final meditok/weights/meditok-small
