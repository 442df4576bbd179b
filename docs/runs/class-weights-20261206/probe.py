"""Train only the image encoder of a run (its mask codec loaded) under --set overrides; print the val curve.

usage: probe.py RUN LABEL [section.key=value ...]   (env PROBE_LOSS=... picks a loss variant)
"""
import json, os, sys, time
from pathlib import Path

import torch
from monai.losses import DiceCELoss

from privacysf.center import image_encoder as ie
from privacysf.center.codecs import MaskCodec
from privacysf.center.pipeline import MASK_CODEC
from privacysf.common.torchutil import seed_everything
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import prepare

run, label, sets = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
cfg = ExperimentConfig.load_run(run / "config.json").override(sets)
seed_everything(cfg.train.seed, 1)
data = prepare(cfg.data)
device = torch.device("cpu")
codec = MaskCodec(data.info.num_classes, cfg.codec)
state = torch.load(run / MASK_CODEC, map_location="cpu", weights_only=False)
codec.load_state_dict(state["model"])
variant = os.environ.get("PROBE_LOSS", "")
if variant:
    original = ie.TaskObjective.__init__

    def patched(self, *a, **k):
        original(self, *a, **k)
        if variant == "ce_balanced":
            counts = torch.bincount(torch.from_numpy(data.train.masks).flatten(), minlength=codec.num_classes).float()
            w = (counts.sum() / counts).sqrt(); w = w / w.mean()
            self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, weight=w)
            print("ce weights", w.tolist(), flush=True)
        elif variant == "nobg":
            self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
        elif variant == "batchdice":
            self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

    ie.TaskObjective.__init__ = patched
start = time.time()
encoder, result, _ = ie.train_image_encoder(cfg, data.train, data.val, codec, device, None)
out = {"label": label, "sets": sets, "variant": variant, "seconds": time.time() - start}
out["best"] = result.best_score; out["val"] = [round(h["val_score"], 3) for h in result.history]
print("RESULT", json.dumps(out), flush=True)
