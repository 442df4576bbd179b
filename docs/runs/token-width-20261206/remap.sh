#!/bin/bash
# Retrain only the mapper on each keyed fit's fixed center (tools/remap.py), two centers at a time:
# 64 slots with tokens as wide as the slots (128), 64 wide and 32 wide. The centers are the six fits
# of docs/runs/pooled-transformer-20261206 (its fits.sh); run from the checkout that holds them in
# runs/keyed, with the code of this study's commit. The reference ran as `mapper.latents=64` (the
# logs' label) when tokens were as wide as the slots by default; token_width=0 says so today.
remap() { PYTHONPATH=src .venv/bin/python tools/remap.py "$1" \
  mapper.latents=64,mapper.token_width=0 mapper.latents=64,mapper.token_width=64 \
  mapper.latents=64,mapper.token_width=32 \
  --out remaps/$(basename $1) > remaplogs/$(basename $1).md 2>&1; }
mkdir -p remaps remaplogs
runs=(runs/keyed/*)
(for r in "${runs[@]:0:3}"; do remap $r; done) &
(for r in "${runs[@]:3:3}"; do remap $r; done) &
wait
