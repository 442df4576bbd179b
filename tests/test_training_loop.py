"""The shared training loop's resume file and its epoch hook, in the order a killed process needs."""

import pytest
import torch

from privacysf.common.training import fit
from privacysf.config import TrainConfig


class Leave(Exception):
    """What a hook raises to leave training (a worker stopping, a job cancelled)."""


def tiny_fit(resume, on_epoch, epochs: int = 3):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    x, y = torch.randn(16, 2), torch.randn(16, 1)

    def loss() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(x), y)

    cfg = TrainConfig(epochs=epochs, patience=epochs, progress=False)
    return fit(
        model,
        lambda epoch: [None],
        lambda _: loss(),
        lambda: -float(loss()),
        cfg,
        "tiny",
        resume=resume,
        on_epoch=on_epoch,
    )


def recorded_epoch(resume) -> int | None:
    return torch.load(resume, weights_only=True)["epoch"] if resume.is_file() else None


def test_each_epoch_is_reported_before_the_resume_file_records_it(tmp_path):
    # a process killed between the two then repeats the epoch's report; the other order loses it
    resume, seen = tmp_path / "resume.pt", []
    tiny_fit(resume, lambda record: seen.append((int(record["epoch"]), recorded_epoch(resume))))
    assert seen == [(0, None), (1, 0), (2, 1)]
    assert recorded_epoch(resume) == 2


def test_a_hook_that_leaves_training_keeps_its_epoch_in_the_resume_file(tmp_path):
    resume = tmp_path / "resume.pt"

    def leave_at_one(record: dict[str, float]) -> None:
        if record["epoch"] == 1:
            raise Leave

    with pytest.raises(Leave):
        tiny_fit(resume, leave_at_one)
    assert recorded_epoch(resume) == 1
    resumed = []
    result = tiny_fit(resume, lambda record: resumed.append(int(record["epoch"])))
    assert resumed == [2] and [int(r["epoch"]) for r in result.history] == [0, 1, 2]
