"""Image-encoder-only probe on a fixed mask codec, with encoder variants (env PROBE_ENC).

deep3: two extra residual units at the code's resolution; wide24: image encoder width 24;
dil: the extra units dilated 2 and 4 (larger receptive field at the same cost).
"""
import json, os, sys, time
from pathlib import Path

import torch
from monai.networks.blocks import ResidualUnit
from torch import nn

from privacysf.center import codecs, image_encoder as ie
from privacysf.center.codecs import MaskCodec
from privacysf.center.pipeline import MASK_CODEC
from privacysf.common.torchutil import seed_everything
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import prepare
from privacysf.nets.conv import ConvEncoder, monai_activation

run, label, sets = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
cfg = ExperimentConfig.load_run(run / "config.json").override(sets)
seed_everything(cfg.train.seed, 1)
data = prepare(cfg.data)
codec = MaskCodec(data.info.num_classes, cfg.codec)
codec.load_state_dict(torch.load(run / MASK_CODEC, map_location="cpu", weights_only=False)["model"])
variant = os.environ.get("PROBE_ENC", "")


def image_encoder(c):
    width = 24 if variant == "wide24" else c.width
    enc = ConvEncoder(1, c.image_channels, width, c.downsample, c.norm, c.padding, c.activation)
    if variant in ("deep3", "dil"):
        layers = list(enc.net)
        ch = layers[-1].in_channels
        act = monai_activation(c.activation)
        extra = [ResidualUnit(2, ch, ch, strides=1, subunits=2, norm=c.norm, act=act, dilation=d) for d in ((2, 4) if variant == "dil" else (1, 1))]
        enc.net = nn.Sequential(*layers[:-1], *extra, layers[-1])
    return enc


ie.build_image_encoder = image_encoder
codecs.build_image_encoder = image_encoder
start = time.time()
encoder, result, _ = ie.train_image_encoder(cfg, data.train, data.val, codec, torch.device("cpu"), None)
out = {"label": label, "variant": variant, "sets": sets, "seconds": time.time() - start, "params": sum(p.numel() for p in encoder.parameters())}
out["best"] = result.best_score; out["val"] = [round(h["val_score"], 3) for h in result.history]
print("RESULT", json.dumps(out), flush=True)
