"""The augmentation study: pairing within seeds, its intervals, and one tiny study end to end."""

from __future__ import annotations

import json
import math

import pytest

from privacysf.config import AblationConfig, AugmentConfig, CodecConfig, ExperimentConfig
from privacysf.errors import ConfigError
from privacysf.workflows.ablate import check_reach, run_ablation, study_cells, variants
from privacysf.workflows.ablation_table import ablation_rows, join_cells, t_interval
from tests.fitkit import TINY_FIT


def _cell(seed: int, none: float, flip: float, unet: float) -> dict:
    rows = {"none": {"dice_3d": none}, "+flip": {"dice_3d": flip}}
    return {
        "fraction": 0.25,
        "seed": seed,
        "train_slices": 9,
        "centers": {"0": rows},
        "unet": {"dice_3d": unet},
    }


def test_changes_are_paired_within_seeds():
    """Splits differ a lot (0.5 to 0.7) and the policy adds 0.04-0.06 on each: the paired interval
    must exclude 0, which an interval of the Dice levels alone could never show."""
    summary = {"cells": [_cell(0, 0.50, 0.55, 0.60), _cell(1, 0.60, 0.66, 0.70), _cell(2, 0.70, 0.74, 0.75)]}
    rows = {row[2]: row for row in ablation_rows(summary)}
    assert rows["none"][4] == "0.000 [0.000, 0.000]"
    half = 4.3027 * 0.01 / math.sqrt(3)  # t(0.975, 2) · sd of (0.05, 0.06, 0.04) / √3
    assert rows["+flip"][4] == f"{0.05:.3f} [{0.05 - half:.3f}, {0.05 + half:.3f}]"
    assert rows["+flip"][3].startswith("0.650 [")  # the level's interval spans the splits' spread
    assert rows["+flip"][5] == rows["+flip"][4]  # one center: the reference is its own
    assert rows["+flip"][6].startswith("0.033 [")  # U-Net ahead by 0.05, 0.04, 0.01
    assert rows["raw U-Net (image-space augmentation)"][3].startswith("0.683 [")


def _other_center(cell: dict, name: str, none: float) -> dict:
    """``cell``'s split, as a later study that trained center ``name`` alone would record it."""
    return {**cell, "centers": {name: {"none": {"dice_3d": none}}}, "equivariance": {name: []}}


def test_a_later_studys_center_joins_the_reference_on_the_same_splits():
    """The new center's changes pair with the first study's reference on each seed; a cell of another
    split (its U-Net differs), a center trained twice, or a seed the new study lacks is refused."""
    first = [_cell(0, 0.50, 0.55, 0.60), _cell(1, 0.70, 0.74, 0.68)]
    later = [_other_center(first[0], "0, flips", 0.53), _other_center(first[1], "0, flips", 0.72)]
    joined = join_cells(first + later)
    assert [list(c["centers"]) for c in joined] == [["0", "0, flips"]] * 2
    rows = {(r[1], r[2]): r for r in ablation_rows({"cells": joined})}
    assert rows[("0, flips", "none")][4].startswith("0.025 [")  # +0.03 and +0.02 against center 0
    with pytest.raises(ValueError, match="splits"):
        join_cells([first[0], {**later[0], "unet": {"dice_3d": 0.61}}])
    with pytest.raises(ValueError, match="trained by two studies"):
        join_cells([first[0], _other_center(first[0], "0", 0.5)])
    with pytest.raises(ValueError, match="seed 1: no run of center 0, flips"):
        join_cells([*first, later[0]])


def test_each_center_of_the_study_is_named_and_configured_with_the_reference_first():
    study = AblationConfig(equivariance=(0.0, 1.0), padding=("zeros", "circular"), symmetry=("none", "flips"))
    centers = dict(study.centers(CodecConfig()))
    assert list(centers)[:4] == ["0", "0, flips", "0, circular", "0, circular, flips"]  # defaults unnamed
    assert len(centers) == 8
    cfg = ExperimentConfig().override(centers["1, circular, flips"])
    assert (cfg.codec.equivariance, cfg.codec.padding, cfg.codec.symmetry) == (1.0, "circular", "flips")


def test_a_study_without_center_axes_trains_the_configured_center():
    """Fails if an unset ``ablation.padding`` falls back to zeros: ``--set codec.padding=circular``
    would then study zero-padded centers."""
    cfg = ExperimentConfig().override(
        ["codec.padding=circular", "codec.equivariance=0.5", "codec.symmetry=flips"]
    )
    [(name, overrides)] = cfg.ablation.centers(cfg.codec)
    assert name == "0.5, circular, flips"
    assert cfg.override(overrides) == cfg


def test_a_center_listed_twice_is_refused():
    with pytest.raises(ConfigError, match="lists an entry twice"):
        ExperimentConfig().override(["ablation.padding=[zeros, zeros]"])


def test_changes_are_measured_against_the_first_center_trained():
    summary = {"cells": [_cell(0, 0.50, 0.55, 0.60), _cell(1, 0.60, 0.66, 0.70)]}
    for cell, circular in zip(summary["cells"], (0.58, 0.70), strict=True):
        cell["centers"] = {"0, circular": {"none": {"dice_3d": circular}}, **cell["centers"]}
    rows = {(row[1], row[2]): row for row in ablation_rows(summary)}
    assert rows[("0, circular", "none")][4].startswith("0.000")
    assert rows[("0", "none")][4].startswith("-0.090")  # 0.50 - 0.58 and 0.60 - 0.70
    assert rows[("0", "+flip")][5].startswith("0.055")  # within its own center: 0.05 and 0.06


def test_the_study_keeps_the_configured_share_and_seed_unless_it_lists_its_own():
    cfg = ExperimentConfig().override(["data.train_fraction=0.25", "data.seed=4", "train.seed=4"])
    [alone] = study_cells(cfg)
    assert (alone.data.train_fraction, alone.data.seed, alone.train.seed) == (0.25, 4, 4)
    cells = study_cells(cfg.override(["ablation.fractions=[0.1, 0.5]", "ablation.seeds=[0, 1]"]))
    assert [(c.data.train_fraction, c.data.seed, c.train.seed) for c in cells] == [
        (0.1, 0, 0),
        (0.1, 1, 1),
        (0.5, 0, 0),
        (0.5, 1, 1),
    ]


def test_each_count_of_views_names_its_rows_after_the_first():
    study = AblationConfig(views=(4, 1, 2))
    assert study.upload_views(CodecConfig()) == [("", 4), (", 1 view", 1), (", 2 views", 2)]
    affine = study.upload_views(CodecConfig(view_augmentation="affine"))
    assert affine == [("", 4), (", 1 affine view", 1), (", 2 affine views", 2)]
    assert AblationConfig().upload_views(CodecConfig(upload_views=3)) == [("", 3)]
    with pytest.raises(ConfigError, match="lists an entry twice"):
        ExperimentConfig().override(["ablation.views=[2, 2]"])


def test_one_seed_gives_a_mean_without_an_interval():
    mean, low, high = t_interval([0.3])
    assert mean == 0.3 and math.isnan(low) and math.isnan(high)


def test_a_policy_switches_its_augmentations_on_together():
    rows = variants(AugmentConfig(), ("flip+shift", "mixup"))
    assert set(rows) == {"none", "+flip+shift", "+mixup"}
    assert rows["+flip+shift"].flip == rows["+flip+shift"].shift == 0.5
    assert rows["+flip+shift"].mixup == 0 and rows["+mixup"].flip == 0


def test_the_configured_default_is_a_row_and_no_augmentation_is_trained_twice():
    recommended = AugmentConfig.recommended()
    assert set(variants(recommended, ("flip",))) == {"none", "+flip", "default"}  # default -shift is none
    assert set(variants(recommended, ("shift",))) == {"none", "+shift"}  # default is +shift
    both = recommended.updated(flip=0.5)
    assert set(variants(both, ("flip",))) == {"none", "+flip", "default", "default -flip"}  # -shift is +flip


def test_each_reach_of_the_shift_is_a_row_of_its_own_and_unshifted_rows_are_not_repeated():
    rows = variants(AugmentConfig.recommended(), ("flip", "shift+cutmix"), max_shifts=(2, 16))
    assert list(rows) == [
        "none",
        "+flip",
        "+shift+cutmix",
        "+shift+cutmix, shifts up to 16",
        "default",
        "default, shifts up to 16",
    ]
    assert rows["none"].max_shift == rows["+flip"].max_shift == rows["default"].max_shift == 2
    assert rows["default, shifts up to 16"] == AugmentConfig.recommended().updated(max_shift=16)
    assert rows["+shift+cutmix, shifts up to 16"].cutmix == 0.5
    assert variants(AugmentConfig(max_shift=4), ("shift",))["+shift"].max_shift == 4  # unset: as configured
    with pytest.raises(ConfigError, match="lists an entry twice"):
        ExperimentConfig().override(["ablation.max_shifts=[2, 2]"])


def test_a_shift_longer_than_half_the_grid_is_refused_before_anything_trains(tmp_path):
    too_long = ExperimentConfig().override(
        ["data.size=64", "ablation.max_shifts=[2, 9]", f"output_dir={tmp_path}"]
    )
    with pytest.raises(ConfigError, match="token grid 16 wide: half of it \\(8\\)"):
        run_ablation(too_long)
    assert not list(tmp_path.iterdir())  # refused before a run folder was made
    check_reach(too_long.override(["ablation.max_shifts=[2, 8]"]))  # half the side is allowed


def test_an_unknown_augmentation_in_a_policy_is_refused_by_name():
    with pytest.raises(ConfigError, match="'flip\\+flop': flop is not one of"):
        ExperimentConfig().override(["ablation.policies=[flip, flip+flop]"])


def test_a_tiny_study_trains_every_cell_and_writes_its_table(tmp_path):
    settings = [*TINY_FIT, "train.epochs=1", "train.threads=1", f"output_dir={tmp_path}"]
    settings.append("codec.wire_compression=none")  # fixed-length messages: bytes count the pairs sent
    study = [
        "ablation.policies=[flip]",
        "ablation.fractions=[0.5]",
        "ablation.seeds=[0, 1]",
        "ablation.views=[1, 2]",
        "ablation.max_shifts=[2, 3]",
    ]
    full = ExperimentConfig().override(settings)
    run_dir, summary = run_ablation(full.override(study))

    cells = summary["cells"]
    assert [(c["fraction"], c["seed"]) for c in cells] == [(0.5, 0), (0.5, 1)]
    from privacysf.data.prepare import prepare

    assert cells[0]["train_slices"] < len(prepare(full.data).train)  # the share was applied
    for cell in cells:
        rows = cell["centers"]["0"]  # default: the recommended shift
        assert set(rows) == {
            "none",
            "+flip",
            "default",
            "default, shifts up to 3",
            "none, 2 views",
            "+flip, 2 views",
            "default, 2 views",
            "default, shifts up to 3, 2 views",
        }
        assert rows["default, shifts up to 3"]["augment"]["max_shift"] == 3
        assert rows["+flip"]["augment"]["flip"] == 0.5 == rows["+flip, 2 views"]["augment"]["flip"]
        assert (rows["+flip"]["upload_views"], rows["+flip, 2 views"]["upload_views"]) == (1, 2)
        assert 1.5 < rows["none, 2 views"]["train_bytes"] / rows["none"]["train_bytes"] < 2.0  # headers once
        assert 0 <= cell["unet"]["dice_3d"] <= 1
        assert (run_dir / "cells" / f"share0.5-seed{cell['seed']}" / "baseline" / "unet.pt").is_file()
        errors = {row["transform"]: row for row in cell["equivariance"]["0"]}
        assert errors["none (reference)"]["image_relative"] == 0
        assert 0 < errors["flip left-right"]["image_relative"] < 10
        assert "shift 3 token(s)" in errors  # the longest shift a row trains with is measured
    assert json.loads((run_dir / "ablation.json").read_text()) == summary
    table = (run_dir / "ablation.md").read_text()
    assert "seeds 0, 1" in table and "| 0.5 (" in table and "raw U-Net" in table
    assert "| 0 | flip left-right | flip |" in table
