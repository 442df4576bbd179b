"""Code datasets (train/val image and mask codes): one rule for every path that takes one in, and
jobs that merge several in their own code space.

Regression: a job's merge used to re-encode the codes as row-major, so a job over keyed uploads (codes
in a center's secret token order) was trained as if the tokens were in raster order; and the upload
check ignored the scan order that the mapper's check enforced.
"""

import io

import numpy as np
import pytest
from servicekit import bundle, codes, sha, stored_dataset
from sqlalchemy import update

from privacysf.config import AugmentConfig, MapperConfig, TrainConfig
from privacysf.errors import ConfigError, WireFormatError
from privacysf.exchange import (
    CodeBatch,
    check_dataset_stream,
    decode_codes,
    encode_codes,
    merge_datasets,
    split_dataset,
    split_messages,
)
from privacysf.server.jobs import training_messages
from privacysf.server.mapping import MappingServer
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store
from privacysf.server.tables import DatasetRow

SETTINGS = {"train": {"epochs": 1}, "mapper": {}}
BAD_DATASETS = {
    "scan orders": (
        codes(2, "image") + codes(2, "mask") + codes(1, "image", scan="keyed") + codes(1, "mask"),
        "scan order",
    ),
    "grids": (
        codes(2, "image") + codes(2, "mask", grid=(2, 8)) + codes(1, "image") + codes(1, "mask"),
        "grid",
    ),
    "channels": (
        codes(2, "image") + codes(2, "mask") + codes(1, "image", channels=3) + codes(1, "mask"),
        "channel",
    ),
    "pairs": (codes(3, "image") + codes(2, "mask") + codes(1, "image") + codes(1, "mask"), "pair up"),
    "kinds": (codes(2, "image") + codes(2, "image") + codes(1, "image") + codes(1, "mask"), "expected mask"),
}


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_the_store_and_the_mapper_refuse_a_bad_dataset_with_the_same_error(tmp_path, case):
    payload, words = BAD_DATASETS[case]
    store = Store(ServiceConfig(store=tmp_path / "store"))
    upload = store.dataset_upload(
        store.authenticate(store.create_center("hospital")[1]), "codes", sha(payload)
    )
    upload.write(payload)
    with pytest.raises(WireFormatError, match=words) as stored:
        upload.commit()
    mapper = MappingServer(MapperConfig(width=8), AugmentConfig(), TrainConfig(epochs=1, progress=False))
    with pytest.raises(WireFormatError) as trained:
        mapper.fit(*split_messages(payload, 4))
    assert str(trained.value) == str(stored.value)


def test_the_streamed_check_finds_a_nan_in_any_chunk_and_agrees_with_the_whole_check():
    """An upload is checked chunk by chunk (never decoded whole); a NaN in its last chunk still counts."""
    tokens = np.zeros((64, 16, 4), np.float32)
    tokens[-1, -1, -1] = np.nan
    nan_masks = encode_codes(CodeBatch(tokens, (4, 4), "mask"), "float16")
    payload = codes(64, "image") + nan_masks + codes(1, "image") + codes(1, "mask")
    with pytest.raises(WireFormatError, match="NaN") as whole:
        split_dataset(payload)
    with pytest.raises(WireFormatError, match="NaN") as streamed:
        check_dataset_stream(io.BytesIO(payload), chunk_bytes=256)
    assert str(streamed.value) == str(whole.value)
    good = bundle()
    assert check_dataset_stream(io.BytesIO(good), chunk_bytes=256) == split_dataset(good).layout


def test_datasets_of_different_code_spaces_are_not_merged():
    keyed, plain = split_dataset(bundle(scan="keyed")), split_dataset(bundle())
    assert merge_datasets([keyed, keyed]).space.scan == "keyed"
    with pytest.raises(ConfigError, match="different code spaces.*keyed scan"):
        merge_datasets([plain, keyed])


@pytest.fixture
def store(tmp_path):
    return Store(ServiceConfig(store=tmp_path / "store"))


def test_a_job_over_keyed_datasets_trains_on_keyed_codes_in_upload_order(store):
    _, token = store.create_center("hospital")
    caller = store.authenticate(token)
    payloads = [bundle(n_train=6, n_val=2, seed=10 * i, scan="keyed") for i in range(2)]
    ids = [stored_dataset(store, caller, p).id for p in payloads]
    job = store.create_job(caller, "mapper", ids, SETTINGS)
    merged = [decode_codes(m) for m in training_messages(store, job.id)]
    assert [b.scan for b in merged] == ["keyed"] * 4
    assert [b.kind for b in merged] == ["image", "mask", "image", "mask"]
    for part, batch in enumerate(merged):
        uploaded = [decode_codes(split_messages(p, 4)[part]).tokens for p in payloads]
        np.testing.assert_array_equal(batch.tokens, np.concatenate(uploaded))


def test_a_job_whose_files_disagree_on_scan_order_is_not_merged(store):
    """A dataset stored before datasets recorded their scan order reads as row-major in the database
    (migration 0002); the runner reads the real order from the codes and refuses to mix them."""
    _, token = store.create_center("hospital")
    caller = store.authenticate(token)
    ids = [stored_dataset(store, caller, bundle(scan=scan)).id for scan in ("row-major", "keyed")]
    with store.session() as s:
        s.execute(update(DatasetRow).values(scan="row-major"))
    job = store.create_job(caller, "mapper", ids, SETTINGS)
    with pytest.raises(ConfigError, match="different code spaces.*keyed scan"):
        training_messages(store, job.id)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_an_upload_cut_mid_value_is_refused_as_truncated(dtype):
    """Regression (found by the fuzzer): a last message whose body ends inside a value made the
    streamed check decode a partial value and raise ValueError (a 500), not a refusal."""
    last = codes(1, "mask", dtype=dtype)[:-1]
    payload = codes(2, "image") + codes(2, "mask") + codes(1, "image") + last
    with pytest.raises(WireFormatError, match="message 4 of 4 .* is truncated: 1 bytes"):
        check_dataset_stream(io.BytesIO(payload))
    with pytest.raises(WireFormatError, match="truncated"):
        check_dataset_stream(io.BytesIO(payload), chunk_bytes=256)


@pytest.mark.parametrize(
    ("dtype", "last_byte", "words"),
    [
        ("uint2", lambda b: b | 0b1100_0000, "padding bits"),  # 3 values: the top 2 bits pad
        ("uint4", lambda b: b | 0xF0, "padding bits"),  # 3 values: the high nibble of the last byte pads
        ("int8", lambda b: 0x80, r"level indices -127\.\.127"),  # -128: below round(127 v) for v = -1
    ],
)
def test_the_streamed_check_refuses_what_the_decoder_refuses_in_level_dtypes(dtype, last_byte, words):
    parts = [(2, "image"), (2, "mask"), (1, "image"), (1, "mask")]
    good = b"".join(codes(n, kind, channels=1, grid=(1, 3), dtype=dtype) for n, kind in parts)
    assert check_dataset_stream(io.BytesIO(good), chunk_bytes=256) == split_dataset(good).layout
    bad = good[:-1] + bytes([last_byte(good[-1])])
    with pytest.raises(WireFormatError, match=words):
        split_dataset(bad)
    for chunk_bytes in (256, 1):
        with pytest.raises(WireFormatError, match=words):
            check_dataset_stream(io.BytesIO(bad), chunk_bytes=chunk_bytes)
