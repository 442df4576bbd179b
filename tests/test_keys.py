"""The center's secret key: exact inverse, bounded keyed codes, per-key difference, private storage."""

import stat

import numpy as np
import pytest

from privacysf.center.keys import CenterKey, KeyedTransform
from privacysf.config import ExperimentConfig, KeyConfig
from privacysf.errors import ConfigError
from privacysf.exchange import CodeBatch, decode_codes, encode_codes
from privacysf.exchange.wire import KEYED_SCAN, SCAN_ORDER

CHANNELS = {"image": 4, "mask": 6}


def _tokens(n=5, length=64, c=4, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, length, c)).astype(np.float32)


@pytest.mark.parametrize("permute", [False, True])
def test_keyed_transform_inverts_exactly_and_stays_in_the_int8_range(permute):
    transform = KeyedTransform(CenterKey.create(), KeyConfig(True, True, permute), 64, CHANNELS)
    for kind, c in CHANNELS.items():
        plain = _tokens(c=c)
        keyed = transform.forward(plain, kind)
        assert np.abs(keyed).max() <= 1 + 1e-6  # bounded codes still quantise to int8
        assert not np.allclose(keyed, plain)
        np.testing.assert_allclose(transform.inverse(keyed, kind), plain, atol=1e-5)
    assert transform.scan == (KEYED_SCAN if permute else SCAN_ORDER)


def test_keyed_codes_survive_the_wire_and_keep_their_scan():
    transform = KeyedTransform(CenterKey.create(), KeyConfig(True, True, True), 64, CHANNELS)
    keyed = transform.forward(_tokens(), "image")
    batch = decode_codes(encode_codes(CodeBatch(keyed, (8, 8), "image", scan=transform.scan), "int8"))
    assert batch.scan == KEYED_SCAN
    np.testing.assert_allclose(transform.inverse(batch.tokens, "image"), _tokens(), atol=3 / 127)


def test_two_keys_give_different_transforms_and_one_key_is_reproducible(tmp_path):
    cfg = KeyConfig(True, True, True)
    key = CenterKey.create()
    key.save(tmp_path / "key.json")
    again = KeyedTransform(CenterKey.load(tmp_path / "key.json"), cfg, 64, CHANNELS)
    first = KeyedTransform(key, cfg, 64, CHANNELS)
    other = KeyedTransform(CenterKey.create(), cfg, 64, CHANNELS)
    plain = _tokens()
    np.testing.assert_array_equal(first.forward(plain, "image"), again.forward(plain, "image"))
    assert not np.allclose(first.forward(plain, "image"), other.forward(plain, "image"))
    assert stat.S_IMODE((tmp_path / "key.json").stat().st_mode) == 0o600  # readable by the center only


def test_missing_or_broken_keys_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="key .* is missing"):
        CenterKey.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"secret": "abcd"}')
    with pytest.raises(ConfigError, match="holds 2 bytes"):
        CenterKey.load(tmp_path / "bad.json")


def test_permutation_needs_an_order_blind_mapper_and_no_order_augmentation():
    with pytest.raises(ConfigError, match="needs mapper.kind=transformer"):
        ExperimentConfig().override(["key.enabled=true", "key.permute_tokens=true"])
    with pytest.raises(ConfigError, match="need the token order"):
        ExperimentConfig().override(
            ["key.enabled=true", "key.permute_tokens=true", "mapper.kind=transformer", "augment.flip=0.5"]
        )
    ExperimentConfig().override(
        ["key.enabled=true", "key.permute_tokens=true", "mapper.kind=transformer", "augment.mixup=0.5"]
    )


def test_the_transformer_mapper_gets_its_own_smaller_learning_rate_unless_one_is_set():
    from privacysf.config import TRANSFORMER_LR, MapperConfig

    assert MapperConfig(kind="transformer").learning_rate(3e-3) == TRANSFORMER_LR < 3e-3
    assert MapperConfig(kind="cnn").learning_rate(3e-3) == 3e-3
    assert MapperConfig(kind="transformer", lr=1e-4).learning_rate(3e-3) == 1e-4
