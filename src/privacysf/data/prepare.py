"""One entry point from a :class:`DataConfig` to train/val/test slices plus the split's metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from privacysf.config import DataConfig
from privacysf.data.cases import Case
from privacysf.data.layouts import read_folder
from privacysf.data.preprocess import SliceSet, slice_case
from privacysf.data.registry import REGISTRY, get_builtin
from privacysf.data.split import SPLITS, split_cases, split_slabs
from privacysf.errors import DataError

MIN_CASES_FOR_CASE_SPLIT = 3


@dataclass
class DatasetInfo:
    name: str
    class_names: list[str]
    normalization: str
    spacing_known: bool
    display_rotations: int
    source: str = ""
    licence: str = ""
    note: str = ""
    stored_dtype: str = "float32"
    """dtype of the raw images as stored: what sending the image itself would cost per pixel."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class PreparedData:
    info: DatasetInfo
    train: SliceSet
    val: SliceSet
    test: SliceSet
    split: dict = field(default_factory=dict)

    @property
    def raw_image_bytes(self) -> int:
        """Bytes of one raw working-size slice in its stored dtype (the payload to beat)."""
        return int(np.prod(self.train.images.shape[2:])) * np.dtype(self.info.stored_dtype).itemsize

    def splits(self) -> dict[str, SliceSet]:
        return {"train": self.train, "val": self.val, "test": self.test}


def load_cases(cfg: DataConfig) -> tuple[list[Case], DatasetInfo]:
    """Read the configured dataset (built-in name or folder) as whole cases."""
    if cfg.dataset in REGISTRY:
        spec = get_builtin(cfg.dataset)
        cases = spec.load(cfg)
        info = DatasetInfo(
            name=spec.name,
            class_names=list(spec.class_names),
            normalization=spec.normalization,
            spacing_known=all(c.spacing_known for c in cases),
            display_rotations=cases[0].display_rotations,
            source=spec.source,
            licence=spec.licence,
            note=spec.split_note,
            stored_dtype=cases[0].stored_dtype,
        )
        return cases, info
    root = Path(cfg.dataset).expanduser()
    if not root.exists():
        get_builtin(cfg.dataset)  # raises the "unknown dataset" message listing the built-ins
    cases, meta = read_folder(root, cfg.layout, cfg.num_classes)
    labels = sorted(set().union(*(np.unique(c.mask).tolist() for c in cases)))
    num_classes = meta.get("num_classes")
    if num_classes is None:
        if labels != list(range(len(labels))):
            raise DataError(
                f"masks in {root} use labels {labels[:8]}{'…' if len(labels) > 8 else ''}; labels must "
                "be 0..K-1 (0 = background). Relabel the masks (e.g. 255 -> 1 for binary PNG masks) or "
                "add a dataset.json declaring the labels"
            )
        num_classes = labels[-1] + 1
    names = meta.get("class_names") or ["background"] + [f"class-{k}" for k in range(1, num_classes)]
    modality = str(meta.get("modality", "")).lower()
    normalization = (
        "ct" if modality == "ct" else "mr" if modality.startswith(("mr", "t1", "t2")) else "minmax"
    )
    info = DatasetInfo(
        name=root.name,
        class_names=names,
        normalization=normalization,
        spacing_known=all(c.spacing_known for c in cases),
        display_rotations=cases[0].display_rotations,
        source=str(root),
        note=f"{meta['layout']} layout",
        stored_dtype=cases[0].stored_dtype,
    )
    return cases, info


def prepare(cfg: DataConfig) -> PreparedData:
    """Load, normalise, slice, resize and split; splits never share a case (or a slab)."""
    return prepare_cases(*load_cases(cfg), cfg)


def prepare_cases(cases: list[Case], info: DatasetInfo, cfg: DataConfig) -> PreparedData:
    """:func:`prepare` for cases already loaded (a center's share of a dataset split into centers)."""
    if cfg.num_classes is not None and cfg.num_classes != info.num_classes:
        info.class_names = info.class_names[: cfg.num_classes] + [
            f"class-{k}" for k in range(len(info.class_names), cfg.num_classes)
        ]
    method = info.normalization if cfg.normalization == "auto" else cfg.normalization
    info.normalization = method
    sliced = [slice_case(c, cfg.axis, cfg.size, method, cfg.ct_window, cfg.drop_empty) for c in cases]
    if sum(len(s) for s in sliced) == 0:
        raise DataError(f"dataset {cfg.dataset!r} has no slice with a labelled structure")
    if len(cases) >= MIN_CASES_FOR_CASE_SPLIT:
        assignment = split_cases([c.case_id for c in cases], cfg.val_fraction, cfg.test_fraction, cfg.seed)
        parts = {
            name: [s for c, s in zip(cases, sliced, strict=True) if c.case_id in assignment[name]]
            for name in SPLITS
        }
        split: dict[str, object] = {"kind": "case", "cases": assignment}
    else:
        parts = {name: [] for name in SPLITS}
        for s in sliced:
            labels = split_slabs(s.slice_index, cfg.val_fraction, cfg.test_fraction, cfg.seed)
            for code, name in enumerate(SPLITS):
                parts[name].append(s.subset(labels == code))
        split = {
            "kind": "slab",
            "note": "fewer than 3 cases: each case is split into contiguous slabs along the slice "
            "axis (5-10 blocks, 1-slice guard gaps); scores are not across patients",
            "cases": {name: sorted({c.case_id for c in cases}) for name in SPLITS},
        }
    sets = {name: SliceSet.concatenate(parts[name], cfg.size) for name in SPLITS}
    if cfg.train_fraction < 1:
        count = max(1, round(cfg.train_fraction * len(sets["train"])))
        keep = np.zeros(len(sets["train"]), bool)
        keep[np.random.default_rng(cfg.seed).permutation(len(keep))[:count]] = True
        sets["train"] = sets["train"].subset(keep)
        split["train_fraction"] = cfg.train_fraction
    max_label = max(int(s.masks.max()) for s in sets.values() if len(s))
    if max_label >= info.num_classes:
        raise DataError(
            f"dataset {cfg.dataset!r} has label {max_label} but {info.num_classes} classes are "
            "declared; set data.num_classes"
        )
    split["slices"] = {name: len(sets[name]) for name in SPLITS}
    for name in SPLITS:
        if not len(sets[name]):
            raise DataError(
                f"the {name} split of {cfg.dataset!r} is empty; use more cases or slices, or change "
                "data.val_fraction / data.test_fraction"
            )
    split["slice_ranges"] = {
        name: [int(sets[name].slice_index.min()), int(sets[name].slice_index.max())]
        if len(sets[name])
        else []
        for name in SPLITS
    }
    return PreparedData(info, sets["train"], sets["val"], sets["test"], split)


def describe(data: PreparedData) -> dict:
    """Counts, shapes, spacing and class frequencies of a prepared dataset (for ``data show``)."""
    out: dict = {
        "name": data.info.name,
        "classes": data.info.class_names,
        "normalization": data.info.normalization,
        "spacing_known": data.info.spacing_known,
        "source": data.info.source,
        "licence": data.info.licence,
        "note": data.info.note,
        "stored_dtype": data.info.stored_dtype,
        "split": data.split,
    }
    for name, part in data.splits().items():
        if not len(part):
            out[name] = {"slices": 0}
            continue
        counts = np.bincount(part.masks.ravel(), minlength=data.info.num_classes)
        out[name] = {
            "slices": len(part),
            "cases": len(set(part.case_ids)),
            "shape": list(part.images.shape[1:]),
            "spacing_mm": np.round(np.median(part.spacing, axis=0), 4).tolist(),
            "class_fraction": np.round(counts / counts.sum(), 4).tolist(),
        }
    return out
