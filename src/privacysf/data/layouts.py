"""Folder layouts users bring: MSD / nnU-Net raw layout and a plain ``images/`` + ``masks/`` folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

from privacysf.data.cases import Case, case_from_files
from privacysf.data.readers import file_stem, is_image_entry
from privacysf.errors import DataError

NNUNET_CHANNEL = re.compile(r"(.+)_(\d{4})")
"""nnU-Net v2 names input channels ``<case>_0000``, ``<case>_0001``...; labels are ``<case>``."""


def detect_layout(root: Path) -> str:
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        return "msd"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "plain"
    raise DataError(
        f"{root} is neither an MSD/nnU-Net folder (imagesTr/, labelsTr/, dataset.json) nor a plain "
        "folder (images/ and masks/ with matching file names)"
    )


def read_folder(root: Path, layout: str, num_classes: int | None) -> tuple[list[Case], dict]:
    """Read every case of a dataset folder; returns the cases and what the folder says about itself."""
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist; pass a built-in name or a folder")
    if not root.is_dir():
        raise DataError(
            f"dataset {root} is a file; pass a folder in MSD/nnU-Net (imagesTr/, labelsTr/) or plain "
            "(images/, masks/) layout, or use privacysf segment for a single image"
        )
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "msd":
        pairs, meta = _msd_pairs(root)
    elif layout == "plain":
        pairs, meta = _plain_pairs(root), {}
    else:
        raise DataError(f"unknown layout {layout!r}; use auto, msd or plain")
    if not pairs:
        raise DataError(f"{root} ({layout} layout) holds no image/mask pairs")
    num_classes = num_classes or meta.get("num_classes")
    cases = [case_from_files(cid, img, msk, num_classes) for cid, img, msk in pairs]
    meta.update(layout=layout, num_classes=num_classes)
    return cases, meta


def _msd_pairs(root: Path) -> tuple[list[tuple[str, Path, Path]], dict]:
    spec_path = root / "dataset.json"
    if not spec_path.is_file():
        return _msd_entries(root, {}, spec_path)
    try:
        spec = json.loads(spec_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{spec_path} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise DataError(f"{spec_path} must hold a JSON object (MSD / nnU-Net dataset.json)")
    try:
        return _msd_entries(root, spec, spec_path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(
            f"{spec_path} has an unexpected structure ({type(exc).__name__}: {exc}); it needs "
            '"labels" as {"0": "background", ...} or {"background": 0, ...} and, if present, '
            '"training" entries with "image" and "label"'
        ) from None


def _msd_entries(root: Path, spec: dict, spec_path: Path) -> tuple[list[tuple[str, Path, Path]], dict]:
    meta: dict = {}
    labels = spec.get("labels", {})
    if labels:
        meta["num_classes"] = len(labels)
        # MSD writes {"0": "background"}, nnU-Net v2 writes {"background": 0}
        names = (
            [labels[k] for k in sorted(labels, key=int)]
            if all(str(k).isdigit() for k in labels)
            else sorted(labels, key=lambda k: labels[k])
        )
        meta["class_names"] = [str(n) for n in names]
    modality = spec.get("modality") or spec.get("channel_names") or {}
    if modality:
        meta["modality"] = str(next(iter(modality.values())))
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DataError(f"{root}: MSD/nnU-Net layout needs a {folder.name}/ folder")
    if spec.get("training") and isinstance(spec["training"][0], dict):
        pairs = []
        for entry in spec["training"]:
            image, label = root / entry["image"], root / entry["label"]
            for path in (image, label):
                if not path.exists():
                    raise DataError(f"{spec_path} lists {path}, which does not exist")
            pairs.append((file_stem(image), image, label))
        return pairs, meta
    labels_by_stem = {file_stem(p): p for p in labels_dir.iterdir() if is_image_entry(p)}
    pairs = []
    for image in sorted(p for p in images_dir.iterdir() if is_image_entry(p)):
        match = NNUNET_CHANNEL.fullmatch(file_stem(image))
        case_id = match.group(1) if match else file_stem(image)
        if match and match.group(2) != "0000":
            continue  # further input channels of a multi-channel case: the first one is used
        if case_id not in labels_by_stem:
            raise DataError(
                f"image {image} has no label {labels_dir}/{case_id}.* ; add it or remove the image"
            )
        pairs.append((case_id, image, labels_by_stem[case_id]))
    return pairs, meta


def _plain_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    images = {file_stem(p): p for p in sorted((root / "images").iterdir()) if is_image_entry(p)}
    masks = {file_stem(p): p for p in sorted((root / "masks").iterdir()) if is_image_entry(p)}
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DataError(
            f"{root}/images has {len(missing)} file(s) without a mask of the same name in "
            f"{root}/masks, e.g. {images[missing[0]].name}; add the masks or remove the images"
        )
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DataError(
            f"{root}/masks has mask(s) without an image, e.g. {masks[orphans[0]].name}; "
            "remove them or add the images"
        )
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]
