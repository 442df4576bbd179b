"""Encrypted queries: the server maps CKKS ciphertexts of codes, never a readable code or the secret key."""

import json
import stat

import nibabel as nib
import numpy as np
import pytest
import torch
from fitkit import TINY_POLY
from keykit import ckks_secret_forms

from privacysf.center.encryption import QueryEncryption
from privacysf.center.pipeline import CKKS_KEY
from privacysf.common.runs import SECRET_FILE_MODE
from privacysf.config import ExperimentConfig
from privacysf.data.phantom import phantom_case
from privacysf.errors import ConfigError, WireFormatError
from privacysf.exchange.encrypted import (
    CODE_FIELDS,
    EncryptedCodes,
    EvaluationKeys,
    is_encrypted,
)
from privacysf.nets.polynomial import PolynomialMapper
from privacysf.server import MappingServer
from privacysf.server.encrypted import EncryptedMapper
from privacysf.workflows.fit import run_fit
from privacysf.workflows.segment import segment_file

GRID = (8, 8)


@pytest.fixture(scope="module")
def keys():
    encryption = QueryEncryption.create(GRID, 3)
    return encryption, encryption.evaluation_keys().encode()


def poly_mapper(hidden: int = 8, seed: int = 0) -> PolynomialMapper:
    torch.manual_seed(seed)
    return PolynomialMapper(4, 4, GRID, hidden, 3).eval()


def codes(seed: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, GRID[0] * GRID[1], 4)).astype(np.float32)


def test_the_encrypted_map_is_the_plaintext_map(keys):
    encryption, key_message = keys
    model = poly_mapper()
    server = EncryptedMapper(model, EvaluationKeys.decode(key_message))
    x = codes(0)
    reply = server.map(EncryptedCodes.decode(encryption.encrypt(x, "image"), "image")).encode()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(encryption.decrypt(reply) - expected).max() < 1e-3
    assert np.abs(expected).max() > 0.1  # the comparison is not between two near-zero outputs


def test_the_server_view_of_a_query_is_ciphertext_only(keys):
    """Two different codes, and one code twice, give requests that differ in their ciphertexts alone."""
    encryption, _ = keys
    first, again, other = (encryption.encrypt(x, "image") for x in (codes(1), codes(1), codes(2)))
    parsed = [EncryptedCodes.decode(m) for m in (first, again, other)]
    headers = [{k: v for k, v in vars(p).items() if k != "ciphertexts"} for p in parsed]
    assert headers[0] == headers[1] == headers[2]
    # fresh randomness per encryption: the same code never gives the same bytes, so equal images
    # cannot be linked by equal requests
    assert parsed[0].ciphertexts[0][0] != parsed[1].ciphertexts[0][0]
    header = json.loads(first[10 : 10 + int.from_bytes(first[6:10], "little")])
    assert set(header) == CODE_FIELDS and "tokens" not in header
    assert is_encrypted(first) and not any(x.tobytes()[:64] in first for x in codes(1))


def test_evaluation_keys_carry_no_secret_key(keys):
    """Fails if the secret key, in its serialised form, hex, base64 or as raw coefficients, is sent."""
    encryption, key_message = keys
    forms = ckks_secret_forms(encryption)
    leaked = [name for name, form in forms.items() if form in key_message]
    assert not leaked
    assert set(EvaluationKeys.decode(key_message).__dict__) == {
        "key_id",
        "params",
        "steps",
        "relin_keys",
        "galois_keys",
    }


def test_the_secret_key_file_is_owner_only_and_reloads(tmp_path, keys):
    encryption, _ = keys
    encryption.save(tmp_path / "ckks.json")
    assert stat.S_IMODE((tmp_path / "ckks.json").stat().st_mode) == SECRET_FILE_MODE == 0o600
    again = QueryEncryption.load(tmp_path / "ckks.json")
    x = codes(3)
    assert np.allclose(again.decrypt(_as_mask(encryption.encrypt(x, "image"))), x, atol=1e-4)
    with pytest.raises(ConfigError, match="missing"):
        QueryEncryption.load(tmp_path / "absent.json")


def _as_mask(message: bytes) -> bytes:
    """An encrypted image-code message relabelled as a mask-code one (to decrypt it as a reply)."""
    parsed = EncryptedCodes.decode(message)
    parsed.kind = "mask"
    return parsed.encode()


def test_foreign_keys_and_broken_messages_are_refused(keys):
    encryption, key_message = keys
    other = QueryEncryption.create(GRID, 3)
    server = EncryptedMapper(poly_mapper(), EvaluationKeys.decode(key_message))
    with pytest.raises(WireFormatError, match="encrypted under key"):
        server.map(EncryptedCodes.decode(other.encrypt(codes(0), "image")))
    message = encryption.encrypt(codes(0, 1), "image")
    with pytest.raises(WireFormatError):
        EncryptedCodes.decode(message[:-10])
    corrupt = EncryptedCodes.decode(message)
    corrupt.ciphertexts[0][0] = b"\x00" * len(corrupt.ciphertexts[0][0])
    with pytest.raises(WireFormatError, match="not valid"):
        server.map(corrupt)
    with pytest.raises(WireFormatError, match="decrypted"):
        other.decrypt(_as_mask(message))


def test_encryption_needs_the_poly_mapper():
    with pytest.raises(ConfigError, match="mapper.kind=poly"):
        ExperimentConfig().override(["encryption.enabled=true"])
    with pytest.raises(ConfigError, match="power-of-two token grid"):
        ExperimentConfig().override(["encryption.enabled=true", "mapper.kind=poly", "data.size=96"])
    cfg = ExperimentConfig()
    server = MappingServer(cfg.mapper, cfg.augment, cfg.train)
    server.initialise(GRID, 4, 4)
    with pytest.raises(ConfigError, match="mapper.kind=poly"):
        server.register_keys(b"")
    circular = MappingServer(cfg.mapper.updated(kind="poly", padding="circular"), cfg.augment, cfg.train)
    circular.initialise(GRID, 4, 4)
    with pytest.raises(ConfigError, match="train one with mapper.padding=zeros"):
        circular.register_keys(b"")


def test_an_encrypted_fit_scores_as_its_plaintext_twin_and_segments(tmp_path):
    """A whole run with encrypted queries: its test Dice is the same mapper's on plain codes, and
    ``segment`` goes through the run's own mapper with the center's keys."""
    cfg = ExperimentConfig().override(
        [
            *TINY_POLY,
            "encryption.enabled=true",
            f"output_dir={tmp_path}",
        ]
    )
    run_dir, metrics = run_fit(cfg)
    encrypted = metrics["privacysf"]["encrypted_queries"]
    assert encrypted["plaintext_test_dice"] > 0.7
    assert abs(encrypted["test_dice"] - encrypted["plaintext_test_dice"]) < 0.01
    assert encrypted["labels_differing_from_plaintext"] < 0.005
    assert metrics["privacysf"]["test"]["mean"]["dice"]["mean"] == pytest.approx(encrypted["test_dice"])
    assert stat.S_IMODE((run_dir / CKKS_KEY).stat().st_mode) == 0o600
    assert not any(p.name == CKKS_KEY.name for p in (run_dir / "server").iterdir())
    assert "Encrypted queries" in (run_dir / "report.md").read_text()
    # segment: the run's own mapper takes the center's evaluation keys and maps ciphertexts
    case = phantom_case(np.random.default_rng(99), 32, "new")
    nib.save(nib.Nifti1Image(case.image[:, :, :2], np.diag([1.0, 1.0, 2.0, 1.0])), str(tmp_path / "new.nii"))
    out = segment_file(run_dir, tmp_path / "new.nii", tmp_path / "mask.nii.gz", "cpu")
    labels, truth = np.asarray(nib.load(str(out)).dataobj) > 0, case.mask[:, :, :2] > 0
    assert 2 * (labels & truth).sum() / (labels.sum() + truth.sum()) > 0.7
