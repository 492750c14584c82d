#!/usr/bin/env bash
# Reproduces the bundled generator meditok-gpt-small and its evaluation (paper §4.4, Table 3)
# on a 2-core CPU: tokens of the corpus → the `small` GPT (~45 min) → the same GPT on the
# stage-1-only tokenizer's tokens (~45 min, the MedITok-S1 comparison) → gFID / diversity /
# conditional accuracy next to the real-vs-real floor (~30 min) → meditok/weights/meditok-gpt-small.
# Needs the corpus of scripts/train_small.sh (meditok data build-corpus) and, for the
# comparison, the stage-1 parent of meditok-small (runs/stage1_small/final, or S1_TOKENIZER=...).
# Every step resumes when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
MANIFEST=${MANIFEST:-corpus/manifest.csv}
S1_TOKENIZER=${S1_TOKENIZER:-runs/stage1_small/final}
R=runs/synthesis

meditok synth pretokenize "$MANIFEST" --tokenizer meditok-small --out $R/tokens_s2 --threads 1
meditok synth train configs/synthesis/small.yaml --data.shards $R/tokens_s2 --loop.output_dir $R/gpt_small_s2
# what is shipped is stored in fp16: evaluate exactly that
meditok synth bundle $R/gpt_small_s2/final $R/ship --name meditok-gpt-small --overwrite

meditok synth pretokenize "$MANIFEST" --tokenizer "$S1_TOKENIZER" --out $R/tokens_s1 --threads 1
meditok synth train configs/synthesis/small.yaml --data.shards $R/tokens_s1 --loop.output_dir $R/gpt_small_s1 \
  --name meditok-gpt-small-s1

# The CFG default (configs/synthesis/small.yaml: 3) was chosen on validation draws: seed 1, N 48, the
# shipped generator only, highest mean conditional accuracy (a scale within 1 point of a smaller one
# loses to it). The evaluation below uses seed 0 and N 100.
for s in 1 1.5 2 3 4; do
  meditok synth eval "$MANIFEST" --generator $R/ship --label "ship CFG $s" --n 48 --seed 1 --ref-cap 300 \
    --threads 1 --features-cache $R/real_features.pt --quiet --overwrite --temperature 0.8 --top-k 200 \
    --cfg-scale $s --out $R/val/cfg$s
done
# Table 3 at the shipped sampling settings (T 0.8, top-k 200, CFG 3; given explicitly so that both
# generators are sampled alike), without CFG, and at the paper's (T 1, no top-k, no CFG, N 50). Outputs
# (with the per-condition sample caches) stay under $R; only the tables and one grid per modality are kept.
EVAL=(--generator $R/ship --label "LlamaGen-small (MedITok)" --generator $R/gpt_small_s1/final
      --label "LlamaGen-small (MedITok-S1)" --ref-cap 300 --threads 1 --features-cache $R/real_features.pt
      --quiet --overwrite)
meditok synth eval "$MANIFEST" "${EVAL[@]}" --n 100 --temperature 0.8 --top-k 200 --cfg-scale 3 --out $R/eval_main
meditok synth eval "$MANIFEST" "${EVAL[@]}" --n 100 --temperature 0.8 --top-k 200 --cfg-scale 1 --out $R/eval_cfg1
meditok synth eval "$MANIFEST" "${EVAL[@]}" --n 50 --temperature 1.0 --top-k 0 --cfg-scale 1 --out $R/eval_paper
python benchmarks/synthesis.py --threads 1 --small-weights $R/ship --out $R/bench
RES=benchmarks/results/synthesis
mkdir -p $RES
cp $R/eval_main/synthesis_eval.json $RES/synthesis_eval.json
cp $R/eval_main/synthesis_eval.md $RES/synthesis_eval.md
cp $R/eval_cfg1/synthesis_eval.json $RES/synthesis_eval_cfg1.json
cp $R/eval_cfg1/synthesis_eval.md $RES/synthesis_eval_cfg1.md
cp $R/eval_paper/synthesis_eval.json $RES/synthesis_eval_paper_settings.json
cp $R/eval_paper/synthesis_eval.md $RES/synthesis_eval_paper_settings.md
cp $R/bench/bench_synthesis.json $R/bench/bench_synthesis.md $RES/
meditok synth bundle $R/gpt_small_s2/final meditok/weights/meditok-gpt-small --name meditok-gpt-small \
  --metrics $RES/synthesis_eval.json --label "LlamaGen-small (MedITok)" --cfg-scale 3 --overwrite
