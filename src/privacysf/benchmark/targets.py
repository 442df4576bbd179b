"""The benchmark's targets and the accuracy summary they are judged on, from result rows alone.

The report's "Targets" table and the README's generated block both come from :func:`targets`, so a
verdict and the constant it is judged against are written in one place.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from privacysf.benchmark.jobs import PRIVACYSF, PRIVACYSF_SERVED, REFERENCE, UNET

DICE_RATIO_TARGET = 1.0
"""Issue 17: Privacy-SF's test Dice (``task`` mode, mean over seeds) at least the raw U-Net's on every
dataset (the first round asked for 0.95 ×)."""
PAYLOAD_SHARE_TARGET = 0.25
PAYLOAD_UINT8_SHARE_TARGET = 1 / 8
"""Issue 17: a query's bytes both ways, as sent (deflated where that shortens a message), at most an
eighth of the image it codes stored as uint8: the median over the seeds of each run's median query."""
TRAINING_RATIO_TARGET = 3.0
"""Issue 17: every training stage of Privacy-SF together (mask codec, image encoder, mapper) at most
3 × the raw U-Net's training on the same split, in the same process: the median over seeds."""
TRAINING_STAGES = ("mask_codec", "image_encoder", "server_mapper")
LATENCY_TARGET_MS = 19.0
LATENCY_TARGET = {"size": 256, "batch": 1, "device": "cpu", "threads": 2}
LATENCY_RATIO_TARGET = 1.0
"""Issue 17: a query (encode + map + decode) at most as slow as the raw U-Net's inference on the same
images, at every batch size the suite times, measured side by side in one process (CPU)."""
LATENCY_RATIO_SIZE = 256
TRAINING_TARGET_SECONDS = 600.0
TRAINING_TARGET = {"dataset": "icbm152-tissue", "size": 128}
DEFAULT_MODE = f"{PRIVACYSF} task"
UPLOAD_MEMORY_TARGET_MB = 100.0
UPLOAD_TARGET_SIZE_MB = 512.0
"""Issue 18: the server's peak memory during a 512 MiB upload at most 100 MiB above idle."""


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    met: bool
    miss: str
    """By how much it was missed (shown only when it was)."""

    @property
    def verdict(self) -> str:
        return "**met**" if self.met else f"**missed** ({self.miss})"


def accuracy_summary(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (dataset, method): the seeds' test scores, pooled as mean ± std over seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["kind"] == "accuracy":
            groups[(row["dataset"], row["method"])].append(row)
    return {
        key: {
            "seeds": sorted(r["seed"] for r in members),
            "dice": [r["dice"] for r in members],
            "iou": [r["iou"] for r in members],
            "hd95": [r["hd95"] for r in members],
            "assd": [r["assd"] for r in members],
            "unit": members[0]["distance_unit"],
            "runs": sorted({r["run"] for r in members}),
            "rows": members,
        }
        for key, members in sorted(groups.items())
    }


def _accuracy_targets(summary: dict) -> list[Target]:
    out = []
    for dataset in sorted({d for d, _ in summary}):
        ours, unet, ref = (summary.get((dataset, m)) for m in (DEFAULT_MODE, UNET, REFERENCE))
        if not ours:
            continue
        dice = float(np.mean(ours["dice"]))
        if unet:
            base = float(np.mean(unet["dice"]))
            ratio = dice / base
            out.append(
                Target(
                    f"{dataset}: Dice ≥ {DICE_RATIO_TARGET:.2f} × raw U-Net",
                    f"{dice:.3f} vs {base:.3f} (× {ratio:.3f})",
                    ratio >= DICE_RATIO_TARGET,
                    f"by {DICE_RATIO_TARGET - ratio:.3f}",
                )
            )
        if ref:
            base = float(np.mean(ref["dice"]))
            out.append(
                Target(
                    f"{dataset}: Dice above the reference",
                    f"{dice:.3f} vs {base:.3f}",
                    dice > base,
                    f"by {base - dice:.3f}",
                )
            )
    return out


def training_times(summary: dict) -> list[dict]:
    """Per ``task`` run: the seconds of each training stage, their sum, the raw U-Net's training in the
    same run and the sum's ratio to it. The stages and the U-Net ran in one process on the same split
    and threads, so the ratio holds even where the machine's load moved the seconds."""
    out = []
    for (dataset, method), s in sorted(summary.items()):
        if method != DEFAULT_MODE:
            continue
        unet = {r["run"]: r for r in summary.get((dataset, UNET), {}).get("rows", [])}
        for row in sorted(s["rows"], key=lambda r: r["seed"]):
            stages = {k: row["training_cost"][k]["seconds"] for k in TRAINING_STAGES}
            base = unet.get(row["run"])
            unet_seconds = base["training_cost"]["unet"]["seconds"] if base else None
            total = sum(stages.values())
            out.append(
                {
                    "dataset": dataset,
                    "seed": row["seed"],
                    **stages,
                    "all_stages": total,
                    "unet": unet_seconds,
                    "ratio": total / unet_seconds if unet_seconds else None,
                }
            )
    return out


def deflated_payload_share(row: dict) -> float:
    """An accuracy run's median query as sent, both ways, over the bytes of its image stored as uint8."""
    return row["payload_bytes"] / (row["raw_image_bytes"] // np.dtype(row["raw_image_dtype"]).itemsize)


def _parity_targets(summary: dict, settings: dict) -> list[Target]:
    """Issue 17's payload and training targets per dataset, each the median over the seeds' runs (of
    the accuracy jobs, at the suite's image size: the issue asks for the payload at 256², where codes
    deflate further, each token covering less anatomy)."""
    out = []
    times = defaultdict(list)
    for t in training_times(summary):
        if t["ratio"] is not None:
            times[t["dataset"]].append(t["ratio"])
    for (dataset, method), s in sorted(summary.items()):
        if method != DEFAULT_MODE:
            continue
        shares = [deflated_payload_share(r) for r in s["rows"] if "payload_bytes" in r]
        if shares:
            share = float(np.median(shares))
            out.append(
                Target(
                    f"{dataset}: {settings['size']}² query as sent, both ways, ≤ "
                    f"1/{1 / PAYLOAD_UINT8_SHARE_TARGET:g} of the uint8 image",
                    f"{share:.3f} of it (median of {len(shares)} seed(s))",
                    share <= PAYLOAD_UINT8_SHARE_TARGET,
                    f"{share / PAYLOAD_UINT8_SHARE_TARGET:.2f} × the allowance",
                )
            )
        if times[dataset]:
            ratio = float(np.median(times[dataset]))
            out.append(
                Target(
                    f"{dataset}: all training stages ≤ {TRAINING_RATIO_TARGET:g} × the raw U-Net's training",
                    f"{ratio:.2f} × (median of {len(times[dataset])} seed(s))",
                    ratio <= TRAINING_RATIO_TARGET,
                    f"by {ratio - TRAINING_RATIO_TARGET:.2f} ×",
                )
            )
    return out


def _payload_targets(rows: list[dict]) -> list[Target]:
    payload = {r["method"]: r for r in rows if r["kind"] == "payload"}
    if PRIVACYSF not in payload:
        return []
    dtypes = {r["dataset"]: r["raw_image_dtype"] for r in rows if r.get("raw_image_dtype")}
    if not dtypes:  # no dataset measured yet: the allowance for the common stored dtypes
        dtypes = {f"raw image stored as {dtype}": dtype for dtype in ("uint8", "int16", "float32")}
    p = payload[PRIVACYSF]
    out = []
    for dataset, dtype in sorted(dtypes.items()):
        raw = p["size"] ** 2 * np.dtype(dtype).itemsize
        share = p["total"] / raw
        out.append(
            Target(
                f"{dataset}: payload per {p['size']}² query ≤ {PAYLOAD_SHARE_TARGET:g} of the raw image "
                f"({dtype}, {raw} B)",
                f"{p['total']} B ({share:.3f} of it)",
                share <= PAYLOAD_SHARE_TARGET,
                f"{share / PAYLOAD_SHARE_TARGET:.2f} × the allowance",
            )
        )
    return out


def _cost_targets(rows: list[dict], summary: dict, settings: dict) -> list[Target]:
    out = []
    t = LATENCY_TARGET
    for r in rows:
        if r["kind"] == "latency" and r["method"] == PRIVACYSF and all(r[k] == v for k, v in t.items()):
            ms = r["total_ms"]
            out.append(
                Target(
                    f"encode + map + decode ≤ {LATENCY_TARGET_MS:g} ms per {t['size']}² image, batch "
                    f"{t['batch']}, {t['threads']} CPU threads",
                    f"{ms:.1f} ms",
                    ms <= LATENCY_TARGET_MS,
                    f"by {ms - LATENCY_TARGET_MS:.1f} ms",
                )
            )
    for r in rows:
        ours = r["kind"] == "latency" and r["method"] in (PRIVACYSF, PRIVACYSF_SERVED) and "ratio" in r
        if ours and r["device"] == "cpu" and r["size"] == LATENCY_RATIO_SIZE:
            runtime = "ONNX Runtime" if r["method"] == PRIVACYSF_SERVED else "torch"
            out.append(
                Target(
                    f"encode + map + decode ≤ {LATENCY_RATIO_TARGET:g} × the raw U-Net's inference, "
                    f"{r['size']}², batch {r['batch']}, {r['threads']} CPU threads, side by side, mapper in "
                    f"{runtime}",
                    f"{r['ratio']:.2f} × ({r['total_ms']:.1f} ms)",
                    r["ratio"] <= LATENCY_RATIO_TARGET,
                    f"{r['ratio']:.2f} ×",
                )
            )
    dataset, size = TRAINING_TARGET["dataset"], TRAINING_TARGET["size"]
    timed = [r["pipeline_seconds"] for r in summary.get((dataset, DEFAULT_MODE), {}).get("rows", [])]
    if timed and settings["size"] == size:
        median = float(np.median(timed))
        out.append(
            Target(
                f"full pipeline training on {dataset} at {size}² ≤ {TRAINING_TARGET_SECONDS / 60:g} min",
                f"{median / 60:.1f} min (median of {len(timed)} seed(s))",
                median <= TRAINING_TARGET_SECONDS,
                f"by {(median - TRAINING_TARGET_SECONDS) / 60:.1f} min",
            )
        )
    return out


def _service_targets(rows: list[dict]) -> list[Target]:
    """The server's memory during the large upload, judged only at the size the target names."""
    return [
        Target(
            f"server memory during a {UPLOAD_TARGET_SIZE_MB:g} MiB upload ≤ {UPLOAD_MEMORY_TARGET_MB:g} MiB "
            "above idle",
            f"{r['peak_above_idle_mb']:.1f} MiB above idle ({r['idle_rss_mb']:.0f} MiB)",
            r["statuses"] == {"201": 1} and r["peak_above_idle_mb"] <= UPLOAD_MEMORY_TARGET_MB,
            "upload refused"
            if r["statuses"] != {"201": 1}
            else f"by {r['peak_above_idle_mb'] - UPLOAD_MEMORY_TARGET_MB:.1f} MiB",
        )
        for r in rows
        if r["kind"] == "upload_memory" and r["upload_mb"] == UPLOAD_TARGET_SIZE_MB
    ]


def targets(rows: list[dict], summary: dict, settings: dict) -> list[Target]:
    """Every target the results can judge: accuracy, payload as sent and training time per dataset,
    payload per dtype, latency, the whole pipeline's training, the server's memory during an upload."""
    return [
        *_accuracy_targets(summary),
        *_parity_targets(summary, settings),
        *_payload_targets(rows),
        *_cost_targets(rows, summary, settings),
        *_service_targets(rows),
    ]
