"""The server side of the multi-center Flower app (``privacysf.server.federation:app``).

It runs on the SuperLink's side and sees what any server sees: codes, weights of the networks the
centers chose to federate, and scalar metrics. Mappers are trained with :class:`MappingServer` (the
same code as the single-center pipeline and the service's jobs). The shared codecs of
``fedavg-codecs`` are averaged under masks (:meth:`Federation.masked_fedavg`): the server adds masked
uploads and never holds usable codec weights. The raw U-Net of ``unet-fedavg`` (the baseline) is
Flower's weighted average of the centers' ``ArrayRecord``s. Centers that encrypt their queries
(``encryption.enabled``) send their test codes as CKKS ciphertexts with public evaluation keys: the
server maps them with the poly mapper and sends back ciphertexts. Everything it receives or makes
is written to ``<run-dir>/server/`` as soon as it arrives (atomic writes), so a center dropping out,
or the run failing, never loses what is already stored.

Run config keys (``flwr run --run-config``): ``config`` (the ExperimentConfig as JSON), ``run-dir``
and ``num-centers``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from privacysf.common.runs import write_bytes, write_json
from privacysf.common.torchutil import save_checkpoint
from privacysf.config import ExperimentConfig
from privacysf.errors import FederationError
from privacysf.exchange import flower, masking
from privacysf.server.mapping import MappingServer

CODE_MODES = {
    "alone": flower.LOCAL,
    "pooled": flower.LOCAL,
    "pooled-noembed": flower.LOCAL,
    "fedavg-codecs": flower.SHARED,
}
"""Privacy-SF modes: which codecs their codes come from."""


@dataclass
class Member:
    node_id: int
    index: int
    name: str


@dataclass
class Federation:
    """One multi-center run as the server drives it, round by round."""

    grid: Grid
    cfg: ExperimentConfig
    folder: Path
    expected: int
    members: list[Member] = field(default_factory=list)
    traffic: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    results: dict[str, dict[str, dict]] = field(default_factory=dict)

    # --- bookkeeping -----------------------------------------------------------------------------
    def save_status(self, status: str, **extra) -> None:
        write_json(
            self.folder / "status.json",
            {
                "status": status,
                "centers": [m.name for m in self.members],
                "dropped": self.dropped,
                "traffic": self.traffic,
                "results": self.results,
                **extra,
            },
        )

    def exchange(
        self, action: str, phase: str, content: Callable[[Member], RecordDict], round_: int = 0
    ) -> dict[int, RecordDict]:
        """Send one message per active center, wait for the replies, log bytes and time per center.

        A center that does not answer within ``federation.round_timeout`` (or answers with an error)
        is dropped: the run goes on with the others, or stops with :class:`FederationError`, as
        ``federation.on_dropout`` says.
        """
        started = time.perf_counter()
        messages = {m.node_id: Message(content(m), m.node_id, action) for m in self.members}
        down = {m.node_id: flower.message_bytes(messages[m.node_id]) for m in self.members}
        replies = self.grid.send_and_receive(messages.values(), timeout=self.cfg.federation.round_timeout)
        received = {r.metadata.src_node_id: r for r in replies}
        seconds = time.perf_counter() - started
        centers: dict[str, dict[str, float]] = {}
        entry = {"phase": phase, "round": round_, "seconds": round(seconds, 3), "centers": centers}
        answers: dict[int, RecordDict] = {}
        lost = []
        for m in self.members:
            r = received.get(m.node_id)
            if r is None or r.has_error():
                reason = "no reply in time" if r is None else f"error: {r.error.reason}"
                lost.append((m, reason))
                continue
            answers[m.node_id] = r.content
            metrics = r.content.metric_records.get("metrics")
            centers[m.name] = {
                "bytes_down": down[m.node_id],
                "bytes_up": flower.message_bytes(r),
                "center_seconds": round(flower.field(metrics, "seconds", float, 0.0), 3) if metrics else 0.0,
            }
        self.traffic.append(entry)
        # One line per round, --quiet or not (it only hides progress bars): a long run shows where it is.
        up = sum(c["bytes_up"] for c in centers.values())
        print(
            f"privacysf federate: {phase} round {round_}: {len(answers)}/{len(self.members)} centers "
            f"answered in {seconds:.1f} s, {up} bytes up",
            flush=True,
        )
        for m, reason in lost:
            self.drop(m, phase, round_, reason)
        self.save_status("running")
        return answers

    def drop(self, member: Member, phase: str, round_: int, reason: str) -> None:
        self.members.remove(member)
        self.dropped.append({"center": member.name, "phase": phase, "round": round_, "reason": reason})
        fed = self.cfg.federation
        problem = None
        if fed.on_dropout == "fail":
            problem = f"center {member.name!r} dropped out in {phase} round {round_} ({reason})"
        elif len(self.members) < fed.min_centers:
            problem = (
                f"center {member.name!r} dropped out in {phase} round {round_} ({reason}); "
                f"{len(self.members)} center(s) left, fewer than federation.min_centers={fed.min_centers}"
            )
        if problem:
            self.save_status("failed", error=problem)
            raise FederationError(problem + "; everything received so far is kept in " + str(self.folder))

    # --- phases ----------------------------------------------------------------------------------
    def connect(self) -> None:
        """Wait for every center's SuperNode, then learn which center each node is."""
        deadline = time.monotonic() + self.cfg.federation.round_timeout
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < self.expected:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(nodes)} of {self.expected} centers connected within "
                    f"{self.cfg.federation.round_timeout:.0f} s; start one SuperNode per center"
                )
            time.sleep(1.0)
            nodes = list(self.grid.get_node_ids())
        self.members = [Member(node, -1, f"node-{node}") for node in nodes]
        for node, answer in self.exchange(flower.HELLO, "hello", lambda m: RecordDict()).items():
            info = answer.config_records["center"]
            member = next(m for m in self.members if m.node_id == node)
            member.index, member.name = flower.field(info, "index", int), flower.field(info, "name", str)
        self.members.sort(key=lambda m: m.index)

    def collect_codes(
        self, codecs: str, content: Callable[[Member], RecordDict], action: str
    ) -> dict[str, dict[str, bytes]]:
        """Ask every center for its code bundle; store each one as it arrives (a center's evaluation
        keys, when it encrypts its queries, beside its codes)."""
        bundles = {}
        for node, answer in self.exchange(action, f"codes-{codecs}", content).items():
            member = next(m for m in self.members if m.node_id == node)
            codes = answer.config_records["codes"]
            encrypted = flower.EVALUATION_KEYS in codes
            test = flower.TEST_QUERIES if encrypted else flower.TEST_IMAGES
            bundle = {part: flower.field(codes, part, bytes) for part in (*flower.UPLOAD_PARTS, test)}
            write_bytes(self.folder / "codes" / f"{codecs}-{member.name}.psfc", b"".join(bundle.values()))
            if encrypted:
                bundle[flower.EVALUATION_KEYS] = flower.field(codes, flower.EVALUATION_KEYS, bytes)
                write_bytes(
                    self.folder / "keys" / f"{codecs}-{member.name}.psfk", bundle[flower.EVALUATION_KEYS]
                )
            bundles[member.name] = bundle
        return bundles

    def train_mappers(
        self, codecs: str, bundles: dict[str, dict[str, bytes]], modes: Sequence[str]
    ) -> dict[str, dict[str, bytes]]:
        """Train each mode's mapper(s) on the codes and map every center's test image codes."""
        names = [m.name for m in self.members if m.name in bundles]
        uploads = [flower.upload_parts(bundles[n]) for n in names]
        fed = self.cfg.federation
        mapped: dict[str, dict[str, bytes]] = {n: {} for n in names}
        for mode in modes:
            if mode == "alone":
                for name, upload in zip(names, uploads, strict=True):
                    server = self.mapping_server(0)
                    server.fit(*upload, checkpoint=self.folder / "mappers" / f"alone-{name}.pt")
                    mapped[name][mode] = map_test(server, bundles[name])
                continue
            # a mapper for encrypted queries takes no center embedding (ciphertexts carry no index)
            embedding = 0 if mode == "pooled-noembed" or self.cfg.encryption.enabled else fed.center_embedding
            server = self.mapping_server(embedding)
            server.fit_pooled(uploads, checkpoint=self.folder / "mappers" / f"{mode}.pt")
            for i, name in enumerate(names):
                mapped[name][mode] = map_test(server, bundles[name], i)
        return mapped

    def mapping_server(self, embedding: int) -> MappingServer:
        mapper = self.cfg.mapper.updated(center_embedding=embedding)
        return MappingServer(mapper, self.cfg.augment, self.cfg.train.updated(progress=False))

    def evaluate_codes(self, codecs: str, mapped: dict[str, dict[str, bytes]]) -> None:
        def content(m: Member) -> RecordDict:
            return RecordDict(
                {
                    "task": ConfigRecord({"codecs": codecs}),
                    "codes": flower.config_record(mapped.get(m.name, {})),
                }
            )

        self.record_scores(self.exchange(flower.EVALUATE_CODES, f"evaluate-{codecs}", content))

    def record_scores(self, answers: dict[int, RecordDict]) -> None:
        for node, answer in answers.items():
            member = next(m for m in self.members if m.node_id == node)
            scores = answer.config_records["scores"]
            for mode in scores:
                self.results.setdefault(mode, {})[member.name] = json.loads(flower.field(scores, mode, str))
        self.save_status("running")

    def fedavg(self, action: str, name: str) -> ArrayRecord:
        """``federation.rounds`` rounds of plain federated averaging, weighted by training slices (the raw
        U-Net baseline: what ``unet-fedavg`` users would run, weights in the clear).

        The averaged weights are saved after every round (``server/fedavg/<name>.pt``).
        """
        weights = ArrayRecord()
        for round_ in range(1, self.cfg.federation.rounds + 1):

            def content(m: Member, w=weights, r=round_) -> RecordDict:
                return RecordDict({"task": ConfigRecord({"round": r}), "weights": w})

            answers = self.exchange(action, name, content, round_)
            weights = aggregate_arrayrecords(
                [
                    RecordDict({"w": a.array_records["weights"], "m": a.metric_records["metrics"]})
                    for a in answers.values()
                ],
                "num-examples",
            )
            save_checkpoint(
                self.folder / "fedavg" / f"{name}.pt", {"round": round_, **flower.record_weights(weights)}
            )
        return weights

    def masked_fedavg(
        self, action: str, name: str, extra: Callable[[], dict[str, ArrayRecord | ConfigRecord]] = dict
    ) -> masking.MaskedSum:
        """``federation.rounds`` rounds of masked federated averaging (:mod:`privacysf.exchange.masking`).

        The server adds the centers' masked uploads and sends the masked sum back with the nonces of
        the uploads it added; only the centers, who share the secret, can unmask it. After every round
        it saves what it holds (``server/fedavg/<name>.pt``): the masked sum, its round, count and
        nonces, which decode to noise without the secret.
        """
        total: masking.MaskedSum | None = None
        for round_ in range(1, self.cfg.federation.rounds + 1):

            def content(m: Member, t=total, r=round_) -> RecordDict:
                task = ConfigRecord({"round": r, "centers": len(self.members)})
                return RecordDict({"task": task, **(t.records("weights") if t else {}), **extra()})

            total = masking.sum_uploads(list(self.exchange(action, name, content, round_).values()), round_)
            held = {"round": round_, "examples": total.examples, "nonces": list(total.nonces)}
            held |= flower.record_weights(total.arrays)
            save_checkpoint(self.folder / "fedavg" / f"{name}.pt", held)
        assert total is not None  # rounds >= 1, and a round with no center left has raised
        return total

    def run(self) -> None:
        modes = list(self.cfg.federation.modes)
        self.connect()
        self.save_status("running")
        local = [m for m in modes if CODE_MODES.get(m) == flower.LOCAL]
        if local:
            bundles = self.collect_codes(flower.LOCAL, lambda m: RecordDict(), flower.LOCAL_CODES)
            self.evaluate_codes(flower.LOCAL, self.train_mappers(flower.LOCAL, bundles, local))
        if "fedavg-codecs" in modes:
            codec = self.masked_fedavg(flower.MASK_CODEC_ROUND, "mask_codec")
            encoder = self.masked_fedavg(
                flower.IMAGE_ENCODER_ROUND, "image_encoder", lambda: codec.records("mask_codec")
            )
            shared = RecordDict({**codec.records("mask_codec"), **encoder.records("image_encoder")})
            bundles = self.collect_codes(flower.SHARED, lambda m: shared, flower.SHARED_CODES)
            self.evaluate_codes(flower.SHARED, self.train_mappers(flower.SHARED, bundles, ["fedavg-codecs"]))
        if "unet-fedavg" in modes:
            unet = self.fedavg(flower.UNET_ROUND, "unet")
            self.record_scores(
                self.exchange(flower.EVALUATE_UNET, "evaluate-unet", lambda m: flower.records(weights=unet))
            )
        self.save_status("finished")


def map_test(server: MappingServer, bundle: Mapping[str, bytes], center: int | None = None) -> bytes:
    """A center's test codes mapped: plain codes as they are, encrypted ones under the evaluation keys
    that came with them (the reply is then ciphertext that only the center can read)."""
    if flower.EVALUATION_KEYS in bundle:
        server.register_keys(bundle[flower.EVALUATION_KEYS])
        return server.map(bundle[flower.TEST_QUERIES])
    return server.map(bundle[flower.TEST_IMAGES], center=center)


def _main(settings: Mapping[str, Any] | None, grid: Grid, context: Context) -> None:
    settings = settings or context.run_config
    cfg = ExperimentConfig.from_dict(json.loads(str(settings["config"])))
    flower.check_settings(cfg)
    folder = Path(str(settings["run-dir"])) / "server"
    Federation(grid, cfg, folder, int(settings["num-centers"])).run()


def make_app(settings: Mapping[str, Any] | None = None) -> ServerApp:
    """The ServerApp. ``settings`` (``config``, ``run-dir``, ``num-centers``) is given directly in a
    simulation; a deployed run reads it from its run config (``flwr run --run-config``)."""
    server = ServerApp()
    server.main()(functools.partial(_main, settings))
    return server


app = make_app()
"""What a deployed SuperLink runs (``serverapp`` component of the Flower app's pyproject.toml)."""
