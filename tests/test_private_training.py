"""DP-SGD of the server's mapper: per-pair clipping reaches the optimiser, and the budget is accounted."""

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from privacysf.config import AugmentConfig, ExperimentConfig, MapperConfig, TrainConfig
from privacysf.errors import ConfigError
from privacysf.exchange import CodeBatch, encode_codes
from privacysf.server import MappingServer

GRID = (8, 8)
PAIRS = 40
ADAM_STEP = torch.optim.Adam.step


def messages(seed: int) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (PAIRS, 64, 4)).astype(np.float32)
    masks = np.tanh(images[..., ::-1] * 2).astype(np.float32)  # a pair-wise map to learn
    return (
        encode_codes(CodeBatch(images, GRID, "image"), "float32"),
        encode_codes(CodeBatch(masks, GRID, "mask"), "float32"),
    )


def train(mapper: MapperConfig, monkeypatch) -> tuple[MappingServer, list[float]]:
    """A poly mapper trained on random pairs, with the gradient norm Adam saw at every step."""
    norms: list[float] = []

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return ADAM_STEP(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    torch.manual_seed(0)  # the mapper's first weights, whatever earlier tests drew
    server = MappingServer(mapper, AugmentConfig(), TrainConfig(epochs=3, device="cpu", progress=False))
    server.fit(*messages(0), *messages(1))
    return server, norms


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")  # ε is huge at this noise
def test_every_step_adam_takes_is_a_clipped_average(monkeypatch):
    """Fails if the DP optimiser is not the one stepping (``wrap_optimizer`` dropped from the fit):
    without it the raw gradients reach Adam, far above the clip."""
    clip = 1e-3
    mapper = MapperConfig(kind="poly", poly_width=8, dp_noise=1e-6, dp_clip=clip)
    server, norms = train(mapper, monkeypatch)
    batch = TrainConfig().batch_size
    # a Poisson draw holds at most every pair; each contributes at most `clip`, averaged over `batch`
    assert norms and max(norms) <= clip * PAIRS / batch
    assert np.median(norms) <= 2 * clip
    _, plain = train(MapperConfig(kind="poly", poly_width=8), monkeypatch)
    assert np.median(plain) > 100 * clip  # the same training without DP: the bound above is not vacuous
    # 3 epochs of 15 steps: 40 pairs in batches of 8 is 5 steps a pass, 3 passes reach min_steps 12
    assert server.privacy is not None and server.privacy["steps"] >= len(norms) == 3 * 15


def test_the_reported_budget_is_opacus_accounting_of_the_steps_taken(monkeypatch):
    quiet, _ = train(MapperConfig(kind="poly", poly_width=8, dp_noise=0.8), monkeypatch)
    loud, _ = train(MapperConfig(kind="poly", poly_width=8, dp_noise=2.0), monkeypatch)
    spent = quiet.privacy
    assert spent is not None and loud.privacy is not None
    assert spent["sample_rate"] == pytest.approx(TrainConfig().batch_size / PAIRS)
    accountant = RDPAccountant()
    accountant.history = [(0.8, spent["sample_rate"], spent["steps"])]
    assert spent["epsilon"] == pytest.approx(accountant.get_epsilon(spent["delta"]))
    assert loud.privacy["epsilon"] < spent["epsilon"]
    plain, _ = train(MapperConfig(kind="poly", poly_width=8), monkeypatch)
    assert plain.privacy is None


@pytest.mark.parametrize("name", ["mixup", "splice", "cutmix"])
def test_dp_refuses_augmentations_that_mix_pairs(name):
    with pytest.raises(ConfigError, match=name):
        ExperimentConfig().override(["mapper.dp_noise=1.0", f"augment.{name}=0.5"])
    ExperimentConfig().override(["mapper.dp_noise=1.0", "augment.span_mask=0.5"])  # one pair: allowed
