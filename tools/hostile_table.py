"""The hostile-input table of docs/service.md: issue 18's inputs and a fixed-seed fuzz run, answers counted.

Starts ``privacysf server serve`` on a fresh store (the one a ``--server-src`` tree provides, to show an
older build's answers), trains a tiny mapper, sends the hand-written inputs of
:func:`privacysf.benchmark.fuzzing.known_inputs` and ``--requests`` generated ones, and prints
Markdown tables of what came back.

    .venv/bin/python tools/hostile_table.py --requests 5001 --seed 18
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import httpx

from privacysf.benchmark.fuzzing import (
    NO_ANSWER,
    FuzzRequest,
    fuzz_service,
    fuzz_target_model,
    known_inputs,
    send,
)
from privacysf.benchmark.service_process import ServerProcess, center_auth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5001)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--server-src", type=Path, help="serve this source tree (its src/ folder) instead")
    args = parser.parse_args()
    env = {"PYTHONPATH": str(args.server_src.resolve())} if args.server_src else None
    with tempfile.TemporaryDirectory() as root:
        store = Path(root) / "store"
        auth = center_auth(store, "fuzz")
        with ServerProcess(store, env=env) as server, server.client(auth, 120) as client:
            table(client, args.requests, args.seed)


def table(client: httpx.Client, requests: int, seed: int) -> None:
    """Print the answers to the known inputs and to ``requests`` fuzzed ones."""
    model_id = fuzz_target_model(client)
    print("| endpoint | input | status | detail (start) |\n|---|---|---|---|")
    for known in known_inputs():
        try:
            response = send(client, model_id, FuzzRequest(known.target, known.what, known.body))
        except httpx.TransportError as exc:
            print(f"| {known.target} | {known.what} | no answer | `{exc!r}` |")
            continue
        detail = response.text[:70].replace("|", "/")
        print(f"| {known.target} | {known.what} | {response.status_code} | `{detail}` |")
    tally = fuzz_service(client, model_id, requests, seed)
    print(
        f"\n{tally.sent} fuzz requests (seed {seed}), {tally.server_errors} answered 5xx, "
        f"{len(tally.violations)} broke a guarantee\n"
    )
    print("| endpoint | status | requests |\n|---|---|---|")
    for (target, status), count in sorted(tally.statuses.items()):
        print(f"| {target} | {_status(status)} | {count} |")
    families: Counter[tuple[str, int]] = Counter()
    for (case, status), count in tally.cases.items():
        families[case.split(":")[0], status] += count
    print("\n| mutation | status | requests |\n|---|---|---|")
    for (family, status), count in sorted(families.items()):
        print(f"| {family} | {_status(status)} | {count} |")
    for violation in tally.violations[:10]:
        print(f"- {violation}")


def _status(status: int) -> str:
    return "no answer (connection reset)" if status == NO_ANSWER else str(status)


if __name__ == "__main__":
    main()
