"""Hostile input over real HTTP: the inputs that once gave a 500, a forced bug, and structure-aware fuzzing.

Every answer must be below 500 and every refusal a JSON ``detail``; after a 500 the same keep-alive
client must go on working. The server is the app in a uvicorn thread (LoopbackServer) holding one
dataset and one trained model, so map requests reach a real mapper.
"""

import json

import httpx
import numpy as np
import pytest
from servicekit import LoopbackServer, bundle, codes, sha

from privacysf.benchmark.fuzzing import fuzz_service, header_of, message, prepare_model
from privacysf.server.service import create_app
from privacysf.server.settings import ServiceConfig

FUZZ_REQUESTS = 5_001
"""At least 5,000, the three endpoints in turn (1,667 each)."""
FUZZ_SEED = 18


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    app = create_app(ServiceConfig(store=tmp_path_factory.mktemp("hostile") / "store", poll_seconds=0.05))
    _, token = app.state.store.create_center("hostile")
    server = LoopbackServer(app).start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    model_id = prepare_model(client)
    yield app, client, model_id
    client.close()
    server.stop()


def _with(header_change: dict, body: bytes | None = None, kind: str = "image") -> bytes:
    """A valid float32 message of 2 image codes on the model's 4x4 grid, with its header changed."""
    header, valid_body = header_of(codes(2, kind, dtype="float32"))
    return message({**header, **header_change}, valid_body if body is None else body)


def _nested(depth: int = 20_000) -> bytes:
    """A header of JSON nested deeper than the parser's recursion limit."""
    return message(b"[" * depth + b"]" * depth, b"")


def _upload(first: bytes) -> bytes:
    """A dataset upload whose first message (train image codes) is ``first``; the others are valid."""
    return first + bundle()[len(codes(16, "image")) :]


HUGE = np.full((2, 16, 4), 3e38, np.float32).tobytes()
ONE_CODE = np.zeros((1, 16, 4), np.float32).tobytes()
"""The body a shape of ``[true, 16, 4]`` announces when ``true`` is read as 1."""
ISSUE_INPUTS = [
    ("map", "nested JSON header", _nested(), 400, "not valid JSON"),
    ("map", "bool in the shape", _with({"shape": [True, 16, 4]}, ONE_CODE), 400, "positive integers"),
    ("map", "shape overflowing int64", _with({"shape": [2**60, 16, 4]}, b""), 400, "positive integers"),
    ("map", "dtype as a list", _with({"dtype": ["int8"]}), 400, "dtype ['int8']"),
    ("map", "finite 3e38 codes", _with({}, HUGE), 400, "drive the mapper to NaN"),
    ("upload", "nested JSON header", _upload(_nested()), 400, "not valid JSON"),
    (
        "upload",
        "bool in the shape",
        _upload(_with({"shape": [True, 16, 4]}, ONE_CODE)),
        400,
        "positive integers",
    ),
    (
        "upload",
        "shape overflowing int64",
        _upload(_with({"shape": [2**56, 64, 4], "grid": [8, 8]}, b"")),
        400,
        "positive integers",
    ),
    ("upload", "dtype as a list", _upload(_with({"dtype": ["int8"]})), 400, "dtype ['int8']"),
    ("jobs", "NaN learning rate", b'{"datasets":[1],"train":{"lr":NaN}}', 422, "finite number"),
    ("jobs", "infinite learning rate", b'{"datasets":[1],"train":{"lr":Infinity}}', 422, "finite number"),
]


@pytest.mark.parametrize(
    ("target", "what", "body", "status", "words"),
    ISSUE_INPUTS,
    ids=[f"{t}: {w}" for t, w, *_ in ISSUE_INPUTS],
)
def test_the_inputs_that_gave_500_are_refused_with_a_reason(live, target, what, body, status, words):
    _, client, model_id = live
    if target == "map":
        response = client.post(f"/models/{model_id}/map", content=body)
    elif target == "upload":
        response = client.post(
            "/datasets", params={"name": "x"}, content=body, headers={"X-Content-SHA256": sha(body)}
        )
    else:
        response = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    detail = json.loads(response.text)["detail"]  # strict JSON: no NaN in the body
    assert words in str(detail), (what, detail)


def test_a_server_error_leaves_the_keep_alive_client_working(live, monkeypatch):
    app, client, model_id = live

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.state.store, "visible_rows", broken)
    failed = client.get("/datasets")
    assert failed.status_code == 500
    assert failed.json()["detail"]
    monkeypatch.undo()
    good = codes(2, "image")
    answers = [client.post(f"/models/{model_id}/map", content=good).status_code for _ in range(20)]
    assert answers == [200] * 20


def test_structure_aware_fuzzing_gets_no_server_error(live):
    """A fixed-seed run of the generator: the count is asserted, every answer checked as it comes."""
    _, client, model_id = live
    tally = fuzz_service(client, model_id, FUZZ_REQUESTS, FUZZ_SEED)
    assert tally.sent == FUZZ_REQUESTS >= 5_000
    assert tally.violations == []
    assert tally.server_errors == 0
    families = {case.split(":")[0] for case, _ in tally.cases}
    assert {"valid", "field", "dims", "body", "prefix", "header", "upload", "jobs"} <= families
    for target in ("map", "upload", "jobs"):
        assert any(400 <= status < 500 for (t, status) in tally.statuses if t == target), target
    assert tally.statuses["map", 200] and tally.statuses["upload", 201]  # valid ones were served
