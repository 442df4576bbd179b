"""Property-based fuzzing of the live service against its own OpenAPI description (schemathesis).

Every generated request, valid or not, must get an answer below 500, and every refusal must say why
in a JSON ``detail``. The server is a real uvicorn process holding one dataset and one model, so ids
that exist are hit too; it must still answer /health at the end.
"""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from servicekit import TINY_MAPPER, TINY_TRAIN, ServerProcess, bundle, sha

from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store

EXAMPLES_PER_OPERATION = 25
OPERATIONS = 18  # every path and method of the API but the token-gated schema itself


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("fuzz") / "store"
    _, token = Store(ServiceConfig(store=store_dir)).create_center("fuzz-center")
    server = ServerProcess(store_dir).start()
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
        data = bundle()
        http.post("/datasets", params={"name": "d"}, content=data, headers={"X-Content-SHA256": sha(data)})
        job = http.post("/jobs", json={"datasets": [1], "train": TINY_TRAIN, "mapper": TINY_MAPPER}).json()
        while http.get(f"/jobs/{job['id']}").json()["status"] not in ("done", "failed"):
            pass
    yield server, auth
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/health").json() == {"status": "ok"}, "the server stopped serving during the fuzz"
    server.stop()


def operations(url: str, auth: dict):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=auth)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_makes_the_server_fail(live, mode):
    """Every operation with something to generate is sent requests, and none gets a 5xx.

    The request count (printed with ``pytest -s``) is the one quoted in docs/service.md.
    """
    server, auth = live
    ops = operations(server.url, auth)
    assert len(ops) == OPERATIONS
    if mode is GenerationMode.NEGATIVE:  # nothing to make invalid (the token has hand-written tests)
        ops = [op for op in ops if list(op.iter_parameters()) or len(op.body)]
    sent: list[str] = []

    for operation in ops:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case):
            response = case.call(base_url=server.url, headers=auth)
            sent.append(case.operation.label)
            label = case.operation.label
            assert response.status_code < 500, f"{label}: {response.status_code} {response.text}"
            if response.status_code >= 400:
                assert response.json().get("detail"), f"{response.status_code} without an explanation"

        fuzz()

    print(f"fuzz requests ({mode.value}): {len(sent)} over {len(set(sent))} operations")
    assert set(sent) == {op.label for op in ops}  # no operation was skipped without a request
    assert len(sent) >= len(ops) * EXAMPLES_PER_OPERATION / 2
