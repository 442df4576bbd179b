#!/bin/bash
# Retrain only the mapper on each keyed fit's fixed center (tools/remap.py), two centers at a time:
# full attention, 64 slots, 64 slots at half width, 64 slots at a higher learning rate. Run from the
# checkout that holds runs/keyed (fits.sh) with the code of this study's commit.
remap() { PYTHONPATH=src .venv/bin/python tools/remap.py "$1" \
  mapper.latents=0 mapper.latents=64 mapper.latents=64,mapper.width=64 mapper.latents=64,mapper.lr=1.5e-3 \
  --out remaps/$(basename $1) > remaplogs/$(basename $1).md 2>&1; }
mkdir -p remaps remaplogs
runs=(runs/keyed/*)
(for r in "${runs[@]:0:3}"; do remap $r; done) &
(for r in "${runs[@]:3:3}"; do remap $r; done) &
wait
