"""Per-query shifts (``key.per_query_shift``): every code leaves the center rolled by a fresh random
shift of whole tokens, which the circular poly mapper commutes with, so segmentation is unchanged; and
the attacker's recentring undoes the shift, which is why the threat model does not count it as a
defence against an attacker who knows the family."""

import dataclasses
import itertools
import json

import numpy as np
import pytest
from fitkit import TINY_POLY
from servicekit import LoopbackServer

from privacysf.attacks.shifts import recentre
from privacysf.center.client import ServiceClient
from privacysf.cli import main
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import prepare
from privacysf.errors import ConfigError
from privacysf.exchange import decode_codes
from privacysf.exchange.wire import roll_tokens
from privacysf.server.service import create_app
from privacysf.server.settings import ServiceConfig
from privacysf.workflows.fit import reload_center, run_fit
from privacysf.workflows.inprocess import load_server
from privacysf.workflows.remote import upload_run

SHIFTED = [*TINY_POLY, "mapper.padding=circular", "key.per_query_shift=true"]


class Recording:
    """A mapper that keeps every image-code message it maps."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def map(self, message: bytes) -> bytes:
        self.seen.append(message)
        return self.inner.map(message)


@pytest.fixture(scope="module")
def shifted_run(tmp_path_factory):
    """A fit whose uploaded pairs are shifted by seeded draws (a fresh one per message, as from the
    CSPRNG), so the mapper it trains is the same in every run of the suite."""
    out = tmp_path_factory.mktemp("runs")
    draws = itertools.count(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("privacysf.center.pipeline.secrets.randbits", lambda bits: next(draws))
        return run_fit(ExperimentConfig().override([*SHIFTED, f"output_dir={out}"]))


def test_recentring_gives_one_code_for_every_shift():
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((6, 64, 4)).astype(np.float32)
    tokens[:, 9:30] *= 4  # something off-centre for the centroid to find
    for _ in range(5):
        shifts = rng.integers(0, 8, (6, 2))
        assert np.array_equal(recentre(roll_tokens(tokens, (8, 8), shifts), (8, 8)), recentre(tokens, (8, 8)))


def test_shifted_queries_segment_as_unshifted_ones_and_never_line_up(shifted_run):
    """Fails if the shift is not drawn afresh per query (two queries of one image then send the same
    bytes) or if the reply is not rolled back (the labels then move)."""
    run_dir, metrics = shifted_run
    assert metrics["privacysf"]["test"]["mean"]["dice"]["mean"] > 0.7
    cfg, center = reload_center(run_dir)
    server = Recording(load_server(cfg, run_dir))
    images = prepare(cfg.data).test.images[:4]
    first, second = center.segment(server, images), center.segment(server, images)
    unshifted = dataclasses.replace(center, cfg=cfg.override(["key.per_query_shift=false"]))
    assert np.array_equal(first, unshifted.segment(server, images))
    assert np.array_equal(first, second)
    sent = [decode_codes(message).tokens for message in server.seen]
    assert not np.array_equal(sent[0], sent[1])  # the same images, differently aligned
    assert np.array_equal(sent[2], decode_codes(unshifted.image_message(images)).tokens)
    # ... and yet an attacker who knows the family brings every copy to one form
    assert np.array_equal(recentre(sent[0], center.grid), recentre(sent[1], center.grid))


def test_uploaded_pairs_share_their_shift(shifted_run):
    run_dir, _ = shifted_run
    cfg, center = reload_center(run_dir)
    data = prepare(cfg.data)
    images, masks = data.train.images[:6], data.train.masks[:6]
    image_message, mask_message = center.pair_messages(images, masks)
    image_codes, mask_codes = decode_codes(image_message).tokens, decode_codes(mask_message).tokens
    plain_images = decode_codes(center.image_message(images)).tokens
    plain_masks = decode_codes(center.mask_message(masks)).tokens
    for i in range(len(images)):
        found = [
            (dy, dx)
            for dy in range(center.grid[0])
            for dx in range(center.grid[1])
            if np.array_equal(
                roll_tokens(plain_images[i : i + 1], center.grid, np.array([[dy, dx]])),
                image_codes[i : i + 1],
            )
        ]
        assert len(found) == 1
        rolled = roll_tokens(plain_masks[i : i + 1], center.grid, np.array([found[0]]))
        assert np.array_equal(rolled, mask_codes[i : i + 1])


def test_per_query_shifts_need_the_circular_poly_mapper(tmp_path, capsys):
    with pytest.raises(ConfigError, match="--set mapper.kind=poly --set mapper.padding=circular"):
        ExperimentConfig().override(["key.per_query_shift=true"])
    with pytest.raises(ConfigError, match="padding=circular is a setting of the poly mapper"):
        ExperimentConfig().override(["mapper.padding=circular"])
    with pytest.raises(ConfigError, match="leave mapper.padding=zeros"):
        ExperimentConfig().override(
            ["mapper.kind=poly", "mapper.padding=circular", "encryption.enabled=true"]
        )
    settings = [
        "--set",
        "mapper.kind=poly",
        "--set",
        "mapper.padding=circular",
        "--set",
        "key.per_query_shift=true",
    ]
    assert main(["federate", "--dataset", "phantom", *settings, "--set", f"output_dir={tmp_path}"]) == 2
    assert "not built into the Flower app" in capsys.readouterr().err


def test_shifted_codes_through_the_service(shifted_run, tmp_path):
    """Uploads and queries through the service are shifted too; a circular poly model trained there
    segments the shifted queries as the same model does unshifted ones."""
    run_dir, _ = shifted_run
    app = create_app(ServiceConfig(store=tmp_path / "store", poll_seconds=0.05))
    server = LoopbackServer(app).start()
    try:
        _, token = app.state.store.create_center("shifting-center")
        client = ServiceClient(server.url, token)
        dataset = upload_run(client, run_dir, "phantom")
        mapper = {"kind": "poly", "poly_width": 8, "padding": "circular"}
        job = client.wait_job(
            client.start_job([dataset["id"]], train={"epochs": 3}, mapper=mapper)["id"], poll=0.1
        )
        assert job["status"] == "done", job
        cfg, center = reload_center(run_dir)
        images = prepare(cfg.data).test.images[:4]
        remote = Recording(client.mapper(job["model_id"]))
        shifted = center.segment(remote, images)
        unshifted = dataclasses.replace(center, cfg=cfg.override(["key.per_query_shift=false"]))
        assert np.array_equal(shifted, unshifted.segment(remote, images))
        assert not np.array_equal(decode_codes(remote.seen[0]).tokens, decode_codes(remote.seen[1]).tokens)
        client.close()
    finally:
        server.stop()


def attack_with_shifts(out, monkeypatch, draw: int) -> dict:
    """The attack suite's row for ``task / key shift``, with the per-query shifts drawn from seed
    ``draw`` instead of the CSPRNG (everything else in the run is seeded): two draws give two sets of
    shifts over the same codes."""
    monkeypatch.setattr("privacysf.center.pipeline.secrets.randbits", lambda bits: draw)
    settings = ["data.phantom_cases=16", "attack.attacker_steps=10", "attack.curve_steps=[5,20]"]
    settings += ["attack.bootstrap=20", "mapper.kind=poly", "mapper.padding=circular", "train.threads=1"]
    command = ["attack", "--dataset", "phantom", "--size", "32", "--epochs", "2", "--quiet"]
    command += ["--out", str(out), "--modes", "task", "--keys", "shift", "--k", "0", "--seeds", "0"]
    assert main([*command, *(arg for s in settings for arg in ("--set", s))]) == 0
    (run,) = out.iterdir()
    assert "task / key shift" in (run / "attacks.md").read_text()
    (row,) = json.loads((run / "results.json").read_text())["settings"]
    assert row["setting"] == "task / key shift" and row["mapper"] == "poly"
    return row


def test_the_attack_suite_attacks_shifted_codes_as_received_and_recentred(tmp_path, monkeypatch):
    rows = [attack_with_shifts(tmp_path / str(draw), monkeypatch, draw) for draw in (1, 2)]
    for row in rows:
        image, linkage = row["attacks"]["image"], row["attacks"]["linkage"]
        for name in ("nearest-code lookup k=all", "inversion k=all", "ridge k=all"):
            assert f"{name}, recentred" in image
        assert linkage["top1"] == max(linkage["as_received_top1"], linkage["recentred_top1"])
    # the shifts differ between the two runs and the codes as received with them; recentring undoes
    # them, so the attacker who recentres finds the same neighbours whatever shifts were drawn
    first, second = (row["attacks"]["image"] for row in rows)
    lookup = "nearest-code lookup k=all"
    assert first[lookup]["ssim"] != second[lookup]["ssim"]
    assert first[f"{lookup}, recentred"] == second[f"{lookup}, recentred"]
    assert rows[0]["attacks"]["linkage"]["recentred_top1"] == rows[1]["attacks"]["linkage"]["recentred_top1"]
