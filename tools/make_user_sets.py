"""Write three nnU-Net raw datasets that stand in for a new user's data, from the fetched CT/MR scans.

They mirror what issue 16's user brought, with real scans and TotalSegmentator's (silver-standard)
label maps from ``privacysf data fetch``:

- ``Dataset501_CTLiverLesion``: the two CT scans, one class, small liver lesions (few cases, rare
  small foreground). The lesions are synthetic: spheres of 8-14 mm radius inside the liver, made
  hypodense in the scan itself (liver HU - 45, with the scan's own noise kept), so image and label
  agree. Per slice at 128² most lesion cross-sections are 30-150 pixels.
- ``Dataset502_CTAbdomen9``: the two CT scans, nine abdominal organs (BTCV-like: spleen, kidneys,
  gallbladder, liver, stomach, pancreas, aorta, inferior vena cava), several of them 30-60 pixels a
  slice at 128²; the DICOM scan holds six of the nine.
- ``Dataset503_MRAbdomen9``: the one abdominal MR scan, the same nine organs (8+ classes, one case).

Usage: ``.venv/bin/python tools/make_user_sets.py OUT`` then e.g.
``.venv/bin/privacysf fit --dataset OUT/Dataset501_CTLiverLesion`` (no other flag).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from privacysf.data import totalseg
from privacysf.data.readers import Volume, read_volume

ABDOMEN9 = {
    "spleen": ("spleen",),
    "kidney_right": ("kidney_right",),
    "kidney_left": ("kidney_left",),
    "gallbladder": ("gallbladder",),
    "liver": ("liver",),
    "stomach": ("stomach",),
    "pancreas": ("pancreas",),
    "aorta": ("aorta",),
    "inferior_vena_cava": ("inferior_vena_cava",),
}
LESION_RADII_MM = (14.0, 11.0, 8.0)
"""One lesion of each radius per CT scan, so cross-sections span small to mid-sized."""
LESION_CONTRAST_HU = -45.0


def _scans(task: str, classes: dict[str, tuple[str, ...]]) -> list[tuple[str, Volume, np.ndarray]]:
    """(case id, scan, label map merged into ``classes``) for each example scan of a TotalSegmentator
    task (``total``: the two CT scans, ``total_mr``: the MR scan)."""
    folder, lookup = totalseg.fetched_folder(), totalseg.organ_lookup(totalseg.task_class_map(task), classes)
    out = []
    for case_id, image, labels in totalseg.SCANS[task]:
        merged = lookup[np.rint(read_volume(folder / labels).array).astype(np.int64)]
        out.append((case_id.replace("-", ""), read_volume(folder / image), merged))
    return out


def _add_lesions(scan: Volume, liver: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spheres inside the liver, hypodense in the scan: returns (new scan, lesion mask)."""
    image, lesion = scan.array.astype(np.float32), np.zeros(liver.shape, bool)
    spacing = np.asarray(scan.spacing)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in liver.shape], indexing="ij"), -1) * spacing
    depth = _distance_inside(liver, spacing)
    for radius in LESION_RADII_MM:
        # a centre deep enough in the liver that the whole sphere lies inside it
        candidates = np.argwhere((depth > radius + 2) & ~_dilate(lesion, 3))
        if not len(candidates):
            continue
        centre = candidates[rng.integers(len(candidates))] * spacing
        sphere = np.linalg.norm(grid - centre, axis=-1) <= radius
        lesion |= sphere
    image[lesion] += LESION_CONTRAST_HU
    return image, lesion


def _distance_inside(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(mask, sampling=spacing)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=steps) if mask.any() else mask


def _write(
    root: Path,
    name: str,
    modality: str,
    classes: list[str],
    cases: list[tuple[str, Volume, np.ndarray, np.ndarray]],
) -> Path:
    folder = root / name
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for case_id, scan, image, labels in cases:
        nib.save(
            nib.Nifti1Image(image.astype(np.int16), scan.affine),
            folder / "imagesTr" / f"{case_id}_0000.nii.gz",
        )
        nib.save(
            nib.Nifti1Image(labels.astype(np.uint8), scan.affine), folder / "labelsTr" / f"{case_id}.nii.gz"
        )
    spec = {
        "name": name,
        "description": "made by tools/make_user_sets.py from totalsegmentator 2.18.0's example scans",
        "channel_names": {"0": modality},
        "labels": {"background": 0, **{c: i for i, c in enumerate(classes, start=1)}},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(spec, indent=1))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="where the synthetic lesions fall")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    lesion_cases, organ_cases = [], []
    for case_id, scan, organs in _scans("total", ABDOMEN9):
        organ_cases.append((case_id, scan, scan.array, organs))
        image, lesion = _add_lesions(scan, organs == list(ABDOMEN9).index("liver") + 1, rng)
        lesion_cases.append((case_id, scan, image, lesion.astype(np.int64)))
    mr_cases = [(c, s, s.array, organs) for c, s, organs in _scans("total_mr", ABDOMEN9)]
    for folder in [
        _write(args.out, "Dataset501_CTLiverLesion", "CT", ["lesion"], lesion_cases),
        _write(args.out, "Dataset502_CTAbdomen9", "CT", list(ABDOMEN9), organ_cases),
        _write(args.out, "Dataset503_MRAbdomen9", "MR", list(ABDOMEN9), mr_cases),
    ]:
        print(folder)


if __name__ == "__main__":
    main()
