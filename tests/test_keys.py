"""The center's secret key: exact inverse, bounded keyed codes, per-key difference, private storage."""

import os
import stat

import numpy as np
import pytest
from keykit import assert_no_secret, secret_forms

from privacysf.center.keys import KEY_FILE_MODE, CenterKey, KeyedTransform
from privacysf.common.runs import write_json
from privacysf.config import KeyConfig
from privacysf.errors import ConfigError
from privacysf.exchange import CodeBatch, decode_codes, encode_codes
from privacysf.exchange.wire import KEYED_SCAN, SCAN_ORDER, read_header

CHANNELS = {"image": 4, "mask": 6}


def _tokens(n=5, length=64, c=4, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, length, c)).astype(np.float32)


@pytest.mark.parametrize("permute", [False, True])
def test_keyed_transform_inverts_exactly_and_stays_in_the_int8_range(permute):
    transform = KeyedTransform(
        CenterKey.create(), KeyConfig(enabled=True, permute_tokens=permute), 64, CHANNELS
    )
    for kind, c in CHANNELS.items():
        plain = _tokens(c=c)
        keyed = transform.forward(plain, kind)
        assert np.abs(keyed).max() <= 1 + 1e-6  # bounded codes still quantise to int8
        assert not np.allclose(keyed, plain)
        np.testing.assert_allclose(transform.inverse(keyed, kind), plain, atol=1e-5)
    assert transform.scan == (KEYED_SCAN if permute else SCAN_ORDER)


def test_keyed_codes_survive_the_wire_and_keep_their_scan():
    transform = KeyedTransform(CenterKey.create(), KeyConfig(enabled=True, permute_tokens=True), 64, CHANNELS)
    keyed = transform.forward(_tokens(), "image")
    batch = decode_codes(encode_codes(CodeBatch(keyed, (8, 8), "image", scan=transform.scan), "int8"))
    assert batch.scan == KEYED_SCAN
    np.testing.assert_allclose(transform.inverse(batch.tokens, "image"), _tokens(), atol=3 / 127)


def test_two_keys_give_different_transforms_and_one_key_is_reproducible(tmp_path):
    cfg = KeyConfig(enabled=True, permute_tokens=True)
    key = CenterKey.create()
    key.save(tmp_path / "key.json")
    again = KeyedTransform(CenterKey.load(tmp_path / "key.json"), cfg, 64, CHANNELS)
    first = KeyedTransform(key, cfg, 64, CHANNELS)
    other = KeyedTransform(CenterKey.create(), cfg, 64, CHANNELS)
    plain = _tokens()
    np.testing.assert_array_equal(first.forward(plain, "image"), again.forward(plain, "image"))
    assert not np.allclose(first.forward(plain, "image"), other.forward(plain, "image"))
    assert stat.S_IMODE((tmp_path / "key.json").stat().st_mode) == 0o600  # readable by the center only


def test_the_key_file_is_private_by_its_own_chmod_not_by_the_umask(tmp_path):
    """Under a permissive umask an ordinary output is world-readable, so only the key's chmod hides it."""
    previous = os.umask(0o000)
    try:
        CenterKey.create().save(tmp_path / "key.json")
        write_json(tmp_path / "metrics.json", {"dice": 1.0})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o666
    assert stat.S_IMODE((tmp_path / "key.json").stat().st_mode) == KEY_FILE_MODE == 0o600


def test_secret_forms_cover_every_derived_part_and_skip_identities():
    key = CenterKey(bytes(range(32)))
    full = secret_forms(key, KeyedTransform(key, KeyConfig(enabled=True, permute_tokens=True), 256, CHANNELS))
    for name in ["secret/HEX", "secret/urlsafe-base64-unpadded", "secret/key-file", "inverse/json-compact"]:
        assert name in full
    assert "mixing/mask/q.T/float16-be" in full and "mixing/image/q/scale/float64-le" in full
    assert "permutation/uint8-le" in full and "permutation/int8-le" not in full  # 255 overflows int8
    short = secret_forms(key, KeyedTransform(key, KeyConfig(enabled=True, permute_tokens=True), 8, CHANNELS))
    assert "inverse/uint8-be" not in short and "inverse/int16-be" in short  # 8 bytes: too short to search
    bare = secret_forms(key, KeyedTransform(key, KeyConfig(enabled=True, mix_channels=False), 256, CHANNELS))
    assert all(name.startswith("secret/") for name in bare)  # identity matrices and arange are no secret


def test_assert_no_secret_finds_a_planted_form_and_passes_clean_bytes():
    key = CenterKey(bytes(range(32)))
    transform = KeyedTransform(key, KeyConfig(enabled=True, permute_tokens=True), 64, CHANNELS)
    forms = secret_forms(key, transform)
    noise = np.random.default_rng(0).bytes(4096)
    assert_no_secret([noise, b""], forms)
    planted = {
        "inverse/int32-be": transform.inverse_permutation.astype(">i4").tobytes(),
        "mixing/image/q/float16-le": transform.mixing["image"][0].astype("<f2").tobytes(),
    }
    for name, form in planted.items():
        blob = noise[:1000] + form + noise[1000:]
        with pytest.raises(AssertionError, match=f"{name!r} found in blob 1"):
            assert_no_secret([noise, blob], forms)
    # inside a deflated code message, whose bytes as sent do not hold it
    q = transform.mixing["image"][0]
    tokens = np.zeros((1, 256, CHANNELS["image"]), np.float32)
    tokens.reshape(-1)[100 : 100 + q.size] = q.ravel()
    message = encode_codes(CodeBatch(tokens, (16, 16), "image"), "float32", "deflate")
    form = forms["mixing/image/q/float32-le"]
    assert read_header(message).compression == "deflate" and form not in message
    with pytest.raises(AssertionError, match="'mixing/image/q/float32-le' found in blob 0"):
        assert_no_secret([b"prefix" + message], forms)


def test_missing_or_broken_keys_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="key .* is missing"):
        CenterKey.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"secret": "abcd"}')
    with pytest.raises(ConfigError, match="holds 2 bytes"):
        CenterKey.load(tmp_path / "bad.json")


def test_the_transformer_mapper_gets_its_own_smaller_learning_rate_unless_one_is_set():
    from privacysf.config import TRANSFORMER_LR, MapperConfig

    assert MapperConfig(kind="transformer").learning_rate(3e-3) == TRANSFORMER_LR < 3e-3
    assert MapperConfig(kind="cnn").learning_rate(3e-3) == 3e-3
    assert MapperConfig(kind="transformer", lr=1e-4).learning_rate(3e-3) == 1e-4
