"""The typed configuration: each bad value is refused with its field named, rules are stated once,
saved configs load back equal, and the service's job settings follow the same models."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from privacysf.config import (
    CENTER_PARTITIONS,
    AugmentConfig,
    ExperimentConfig,
    MapperConfig,
    TrainConfig,
)
from privacysf.errors import ConfigError
from privacysf.exchange.wire import KEYED_SCAN
from privacysf.server import MappingServer
from privacysf.server.service.schemas import JobIn, MapperSettings, TrainSettings

DOCS = Path(__file__).resolve().parents[1] / "docs"
PERMUTED = ["key.enabled=true", "key.permute_tokens=true", "augment.shift=0"]
CPU = TrainConfig(device="cpu")


def refused(*assignments: str) -> str:
    with pytest.raises(ConfigError) as error:
        ExperimentConfig().override(list(assignments))
    return str(error.value)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("data.size=0", "data.size must be greater than 0 (got 0)"),
        ("data.ct_window=[240, -160]", "data.ct_window must be [low, high] with low < high"),
        ("train.lr=0", "train.lr must be greater than 0"),
        ("train.lr=.nan", "train.lr must be a finite number"),
        ("train.device=gpu", "train.device must be auto, cpu, cuda or cuda:N"),
        ("unet.strides=[2, 2]", "unet.strides must hold one stride fewer than unet.channels"),
        ("codec.downsample=6", "codec.downsample must be 2, 4, 8"),
        ("key.enabled=maybe", "key.enabled must be a valid boolean"),
        ("mapper.heads=3", "mapper.heads must divide mapper.width (128)"),
        ("mapper.kernel=4", "mapper.kernel must be odd"),
        ("augment.flip=1.5", "augment.flip must be less than or equal to 1"),
        ("federation.centers=1", "federation.centers must be greater than or equal to 2"),
        ("attack.leaked_pairs=[10, -1]", "attack.leaked_pairs[1] must be greater than or equal to 0"),
        ("train.nonsense=1", "train.nonsense: unknown key; valid keys are epochs, batch_size, lr"),
    ],
)
def test_each_section_names_the_field_it_refuses(assignment, message):
    assert message in refused(assignment)


def test_an_option_lists_what_is_allowed_and_its_exported_names_match():
    message = refused("federation.partition=random")
    assert "federation.partition must be 'iid', 'size-skew' or 'label-skew' (got 'random')" in message
    assert CENTER_PARTITIONS == ("iid", "size-skew", "label-skew")


def test_split_fractions_leave_every_split_some_cases():
    assert "data.val_fraction must lie in (0, 1), 0 excluded: every network early-stops" in refused(
        "data.val_fraction=0"
    )
    assert "data.test_fraction must lie in (0, 1)" in refused("data.test_fraction=0")
    assert "data.test_fraction plus data.val_fraction must stay below 1" in refused(
        "data.val_fraction=0.5", "data.test_fraction=0.5"
    )
    data = ExperimentConfig().override(["data.val_fraction=0.45", "data.test_fraction=0.45"]).data
    assert (data.val_fraction, data.test_fraction) == (0.45, 0.45)


def test_a_width_for_a_stage_the_decoder_does_not_have_is_refused():
    assert "codec.mask_decoder_width sets the full-resolution stage that codec.mask_upsampling=subpixel" in (
        refused("codec.mask_decoder_width=8", "codec.mask_upsampling=subpixel")
    )
    kept = ExperimentConfig().override(["codec.mask_decoder_width=8", "codec.mask_upsampling=transposed"])
    assert kept.codec.top_decoder_width == 8


def test_cross_section_sizes_are_checked():
    assert "data.size 100 must be a multiple of codec.downsample 8" in refused(
        "codec.downsample=8", "data.size=100"
    )
    assert "data.size 36 must be divisible by the U-Net's total stride 8" in refused("data.size=36")


@pytest.mark.parametrize(
    ("mapper", "augment", "problem"),
    [
        ("cnn", {}, "needs mapper.kind=transformer"),
        ("transformer", {"flip": 0.5}, "augment.flip need the token order"),
        ("transformer", {"shift": 0.5, "splice": 0.1}, "augment.shift/splice need the token order"),
    ],
)
def test_one_permutation_rule_binds_the_config_and_the_server(mapper, augment, problem):
    settings = [f"augment.{name}={value}" for name, value in augment.items()]
    assert problem in refused(*PERMUTED, f"mapper.kind={mapper}", *settings)
    server = MappingServer(MapperConfig(kind=mapper, width=16), AugmentConfig(**augment), CPU)
    with pytest.raises(ConfigError, match=f"secret \\({KEYED_SCAN}\\) token order: .*{problem}"):
        server.initialise((4, 4), 4, 4, scan=KEYED_SCAN)


def test_a_run_shifts_codes_by_default_and_a_permuted_run_must_say_it_does_not():
    assert ExperimentConfig().augment == AugmentConfig.recommended() != AugmentConfig()
    assert ExperimentConfig().augment.order_dependent() == ["shift"]
    problem = refused("key.enabled=true", "key.permute_tokens=true", "mapper.kind=transformer")
    assert "augment.shift need the token order" in problem and "set them to 0" in problem


def test_a_permutation_allows_the_transformer_and_order_blind_augmentations():
    cfg = ExperimentConfig().override([*PERMUTED, "mapper.kind=transformer", "augment.mixup=0.5"])
    MappingServer(cfg.mapper, cfg.augment, CPU).initialise((4, 4), 4, 4, scan=KEYED_SCAN)


def test_saved_configs_load_back_equal_with_tuples(tmp_path):
    cfg = ExperimentConfig().override(
        ["attack.seeds=[3, 4]", "unet.channels=[8, 16, 32]", "unet.strides=[2, 2]", "train.lr=1e-3"]
    )
    assert cfg.train.lr == 0.001  # YAML reads "1e-3" as a string; it still becomes a float
    cfg.save(tmp_path / "config.json")
    loaded = ExperimentConfig.load(tmp_path / "config.json")
    assert loaded == cfg
    assert loaded.attack.seeds == (3, 4) and loaded.unet.channels == (8, 16, 32)
    assert isinstance(loaded.data.ct_window, tuple) and isinstance(loaded.federation.modes, tuple)
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 3\nattack:\n  seeds: [1, 2]\n")
    assert ExperimentConfig.load(tmp_path / "config.yaml").attack.seeds == (1, 2)


def test_a_config_saved_before_newer_settings_existed_still_loads():
    runs = DOCS / "benchmarks/first-round-20261130/runs"
    path = runs / "20261130-040351-privacysf-task-icbm152-tissue/config.json"
    assert "decoder_width" not in path.read_text()  # written before attack.decoder_width existed
    cfg = ExperimentConfig.load(path)
    assert (cfg.data.dataset, cfg.data.seed, cfg.train.threads) == ("icbm152-tissue", 1, 2)
    assert cfg.attack.decoder_width == 0 and cfg.attack.private_weights == (0.3, 1.0)


def test_updated_copies_are_checked_like_new_configs():
    with pytest.raises(ConfigError, match="TrainConfig.lr must be greater than 0"):
        TrainConfig().updated(lr=0)
    with pytest.raises(ConfigError, match="augment.reverse need the token order"):
        ExperimentConfig().override([*PERMUTED, "mapper.kind=transformer"]).updated(
            augment=AugmentConfig(reverse=0.5)
        )


def test_the_service_job_settings_are_the_config_fields_with_tighter_caps():
    for settings, config in [(TrainSettings, TrainConfig), (MapperSettings, MapperConfig)]:
        assert settings().model_dump() == config().model_dump(include=set(settings.model_fields))
    for model, values in [
        (MapperSettings, {"kernel": 4}),  # the config's rule
        (MapperSettings, {"kernel": 17}),  # the service's cap
        (TrainSettings, {"lr": 0}),
        (TrainSettings, {"lr": 2}),
        (TrainSettings, {"device": "cuda"}),  # the server's business, not the center's
    ]:
        with pytest.raises(ValidationError, match=next(iter(values))):
            model(**values)
    with pytest.raises(ValidationError, match="finite number"):
        JobIn.model_validate({"datasets": [1], "train": {"lr": float("nan")}})


def test_a_boolean_is_not_a_number():
    """Pydantic would read ``true`` as 1: a typo that must not become a one-epoch run."""
    for setting in ("train.epochs=true", "train.lr=false", "mapper.lr=true", "train.threads=true"):
        with pytest.raises(ConfigError, match=r"must be a number, not true or false"):
            ExperimentConfig().override([setting])
    assert ExperimentConfig().override(["key.enabled=true"]).key.enabled is True


def test_dp_training_refuses_uploaded_views():
    """DP-SGD's accounting counts each training pair once; views make one slice several pairs.
    Fails if the check on ``codec.upload_views`` is dropped from the config's rules."""
    ExperimentConfig().override(["mapper.dp_noise=1.0", "augment.shift=0"])  # one view: accepted
    with pytest.raises(ConfigError, match="mapper.dp_noise needs codec.upload_views=1"):
        ExperimentConfig().override(["mapper.dp_noise=1.0", "codec.upload_views=4"])
