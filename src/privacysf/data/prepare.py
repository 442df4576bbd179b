"""One entry point from a :class:`DataConfig` to train/val/test slices plus the split's metadata."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from privacysf.config import DataConfig
from privacysf.data.cases import Case
from privacysf.data.layouts import read_folder
from privacysf.data.preprocess import SliceSet, slice_case
from privacysf.data.registry import REGISTRY, get_builtin
from privacysf.data.split import SPLITS, class_presence, split_cases, split_slabs
from privacysf.errors import DataError, DataWarning

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
    if len(cases) >= MIN_CASES_FOR_CASE_SPLIT:
        parts, split = _split_by_case(cases, cfg, method)
    else:
        parts, split = _split_by_slab(cases, cfg, method, info.num_classes)
    sets = {name: SliceSet.concatenate(parts[name], cfg.size) for name in SPLITS}
    kept_empty = _keep_foreground(sets) if cfg.drop_empty else []
    if not any(sets[name].masks.any() for name in SPLITS):
        raise DataError(
            f"dataset {cfg.dataset!r} has no slice with a labelled structure: every mask is background "
            "(check that the masks are the label maps of their images)"
        )
    max_label = max(int(s.masks.max()) for s in sets.values())
    if max_label >= info.num_classes:
        raise DataError(
            f"dataset {cfg.dataset!r} has label {max_label} but {info.num_classes} classes are "
            "declared; set data.num_classes"
        )
    _report_coverage(sets, info, split, kept_empty, cfg.dataset)
    if cfg.train_fraction < 1:
        count = max(1, round(cfg.train_fraction * len(sets["train"])))
        keep = np.zeros(len(sets["train"]), bool)
        keep[np.random.default_rng(cfg.seed).permutation(len(keep))[:count]] = True
        sets["train"] = sets["train"].subset(keep)
        split["train_fraction"] = cfg.train_fraction
    split["slices"] = {name: len(sets[name]) for name in SPLITS}
    split["slice_ranges"] = {
        name: [int(sets[name].slice_index.min()), int(sets[name].slice_index.max())] for name in SPLITS
    }
    return PreparedData(info, sets["train"], sets["val"], sets["test"], split)


def _slice_all(cases: list[Case], cfg: DataConfig, method: str, drop_empty: bool) -> list[SliceSet]:
    return [slice_case(c, cfg.axis, cfg.size, method, cfg.ct_window, drop_empty) for c in cases]


def _split_by_case(cases: list[Case], cfg: DataConfig, method: str) -> tuple[dict, dict]:
    """Whole cases per split; empty slices are dropped while slicing (less memory on large sets),
    except in a split whose cases show no foreground at all, which keeps them rather than vanish."""
    assignment = split_cases([c.case_id for c in cases], cfg.val_fraction, cfg.test_fraction, cfg.seed)
    parts = {}
    for name in SPLITS:
        members = [c for c in cases if c.case_id in assignment[name]]
        parts[name] = _slice_all(members, cfg, method, cfg.drop_empty)
        if not sum(len(s) for s in parts[name]):
            parts[name] = _slice_all(members, cfg, method, drop_empty=False)
    return parts, {"kind": "case", "cases": assignment}


def _split_by_slab(cases: list[Case], cfg: DataConfig, method: str, num_classes: int) -> tuple[dict, dict]:
    """Contiguous slabs of every slice of each case, placed so each split holds every class it can.

    Slabs are cut over all slices, empty ones included, before ``drop_empty``: cut over the few
    labelled slices of a small lesion, guard gaps would swallow whole splits.
    """
    sliced = _slice_all(cases, cfg, method, drop_empty=False)
    labels = split_slabs(
        [class_presence(s.masks, num_classes) for s in sliced], cfg.val_fraction, cfg.test_fraction, cfg.seed
    )
    parts = {
        name: [s.subset(case_labels == code) for s, case_labels in zip(sliced, labels, strict=True)]
        for code, name in enumerate(SPLITS)
    }
    for name in SPLITS:
        if not sum(len(s) for s in parts[name]):
            shapes = ", ".join(f"{c.case_id} {c.image.shape}" for c in cases)
            raise DataError(
                f"the {name} split of {cfg.dataset!r} is empty: with fewer than {MIN_CASES_FOR_CASE_SPLIT} "
                f"cases each case is cut into slabs along data.axis={cfg.axis}, and ({shapes}) has too few "
                f"slices along it for {len(SPLITS)} slabs with guard gaps; set data.axis to a longer axis "
                f"or add cases ({MIN_CASES_FOR_CASE_SPLIT} or more are split by case)"
            )
    split = {
        "kind": "slab",
        "note": f"fewer than {MIN_CASES_FOR_CASE_SPLIT} cases: each case is split into contiguous slabs "
        "along the slice axis (5 or more blocks, placed so that every split holds every class the data "
        "allows; 1-slice guard gaps); scores are not across patients",
        "cases": {name: sorted({c.case_id for c in cases}) for name in SPLITS},
    }
    return parts, split


def _keep_foreground(sets: dict[str, SliceSet]) -> list[str]:
    """``drop_empty`` in place; returns the splits that keep their empty slices, having no other."""
    kept_empty = []
    for name in SPLITS:
        foreground = np.flatnonzero(sets[name].masks.reshape(len(sets[name]), -1).any(axis=1))
        if len(foreground):
            sets[name] = sets[name].subset(foreground)
        else:
            kept_empty.append(name)
    return kept_empty


def _report_coverage(
    sets: dict[str, SliceSet], info: DatasetInfo, split: dict, kept_empty: list[str], dataset: str
) -> None:
    """Record (and warn about) classes some split holds no pixel of: its scores say nothing of them."""
    present = {name: set(np.unique(sets[name].masks).tolist()) for name in SPLITS}
    foreground = sorted(set().union(*present.values()) - {0})
    missing = {name: [info.class_names[k] for k in foreground if k not in present[name]] for name in SPLITS}
    split["missing_classes"] = missing
    split["kept_empty_slices"] = kept_empty
    lacking = {
        cls: [name for name in SPLITS if cls in missing[name]]
        for cls in dict.fromkeys(c for name in SPLITS for c in missing[name])
    }
    if not lacking:
        return
    where = "; ".join(
        f"class {cls!r} is absent from the {' and '.join(names)} split" for cls, names in lacking.items()
    )
    empty = (
        f" The {' and '.join(kept_empty)} split shows no foreground at all, so it keeps its empty slices "
        "despite data.drop_empty."
        if kept_empty
        else ""
    )
    warnings.warn(
        DataWarning(
            f"{dataset!r} ({split['kind']} split): {where}. Scores of such a split say nothing about the "
            "class, and early stopping on a validation split without it rewards predicting nothing. The "
            f"class shows on too few slices or cases to reach every split.{empty} Add cases that show it."
        ),
        stacklevel=3,
    )


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
