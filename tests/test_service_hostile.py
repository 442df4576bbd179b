"""Hostile input over real HTTP: the inputs that once gave a 500, a forced bug, and structure-aware fuzzing.

Every answer must be below 500 and every refusal a JSON ``detail``; after a 500 the same keep-alive
client must go on working. The server is the app in a uvicorn thread (LoopbackServer) holding one
dataset and one trained model, so map requests reach a real mapper.
"""

import json

import httpx
import pytest
from servicekit import LoopbackServer, codes

from privacysf.benchmark.fuzzing import FuzzRequest, fuzz_service, fuzz_target_model, known_inputs, send
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
    model_id = fuzz_target_model(client)
    yield app, client, model_id
    client.close()
    server.stop()


KNOWN = known_inputs()


@pytest.mark.parametrize("known", KNOWN, ids=[f"{k.target}: {k.what}" for k in KNOWN])
def test_the_inputs_that_gave_500_are_refused_with_a_reason(live, known):
    _, client, model_id = live
    response = send(client, model_id, FuzzRequest(known.target, known.what, known.body))
    assert response.status_code == known.status, response.text
    detail = json.loads(response.text)["detail"]  # strict JSON: no NaN in the body
    assert known.words in str(detail), (known.what, detail)


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
