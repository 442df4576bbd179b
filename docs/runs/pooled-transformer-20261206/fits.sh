#!/bin/bash
# The six keyed centers (mixing + permutation, full-attention transformer mapper), two fits at a time,
# made at commit 254ba66 (before mapper.latents existed); run from a checkout of that commit.
run() { PYTHONPATH=src .venv/bin/privacysf fit --dataset $1 --seed $2 --quiet \
  --set train.threads=1 --set key.enabled=true --set key.mix_channels=true --set key.permute_tokens=true \
  --set mapper.kind=transformer --set augment.shift=0 --out runs/keyed > logs/$1-$2.log 2>&1; }
mkdir -p logs runs/keyed
(run icbm152-tissue 0; run icbm152-tissue 1; run icbm152-tissue 2) &
(run phantom 0; run phantom 1; run phantom 2) &
wait
