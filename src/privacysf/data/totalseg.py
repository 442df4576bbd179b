"""TotalSegmentator's example CT and MR scans: fetched once at install time, read offline as cases.

The ``totalsegmentator`` sdist on PyPI ships small real scans with multi-organ label maps in
``tests/reference_files/``. ``privacysf data fetch`` (run by ``make test``) downloads that pinned
sdist with pip, checks its sha256, and keeps only the files the built-in datasets read, beside the
label-index -> name maps of TotalSegmentator's own ``class_map`` (``map_to_binary.py``), in a folder
inside the virtual environment. Nothing downloads at run time: a missing folder is a
:class:`DataError` naming the command.

The label maps are TotalSegmentator model output (silver standard), not expert annotation.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from privacysf.data.cases import Case, case_from_volumes
from privacysf.data.readers import read_volume
from privacysf.errors import DataError

VERSION = "2.18.0"
SDIST = f"totalsegmentator-{VERSION}.tar.gz"
SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
DIR_ENV = "PRIVACYSF_TOTALSEG_DIR"
FETCH_COMMAND = "privacysf data fetch"
CLASS_MAP_FILE = "class_map.json"
CLASS_MAPS = ("total", "total_mr")
"""The TotalSegmentator tasks whose label maps the datasets read (CT and MR)."""
REFERENCE = "tests/reference_files"
DICOM_SERIES = "example_ct_dicom"
KEPT_FILES = (
    "LICENSE",
    f"{REFERENCE}/example_ct.nii.gz",
    f"{REFERENCE}/example_seg_fast_force_split.nii.gz",
    f"{REFERENCE}/example_seg_dicom.nii.gz",
    f"{REFERENCE}/example_mr_sm.nii.gz",
    f"{REFERENCE}/example_seg_mr.nii.gz",
)
"""Files kept from the sdist besides the DICOM series folder (paths inside its top folder)."""
ORGANS = {
    "liver": ("liver",),
    "spleen": ("spleen",),
    "kidneys": ("kidney_right", "kidney_left"),
    "stomach": ("stomach",),
    "aorta": ("aorta",),
}
"""Our classes as TotalSegmentator class names: large abdominal organs present in every scan."""
CLASS_NAMES = ("background", *ORGANS)
SCANS = {
    "total": (
        ("ct-nifti", "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
        ("ct-dicom", DICOM_SERIES, "example_seg_dicom.nii.gz"),
    ),
    "total_mr": (("mr", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz"),),
}
"""Per TotalSegmentator task (its class map): (case id, scan, label map) of each fetched example scan."""


def data_dir() -> Path:
    """Where the fetched files live: inside the running environment, or ``$PRIVACYSF_TOTALSEG_DIR``."""
    default = Path(sys.prefix) / "share" / "privacysf" / f"totalsegmentator-{VERSION}"
    return Path(os.environ.get(DIR_ENV) or default)


def fetch(dest: Path | None = None) -> Path:
    """Download the pinned sdist with pip and keep the files the datasets read.

    pip checks the archive's sha256 (``--require-hashes``) before it prepares the sdist's metadata,
    which runs the sdist's own build backend in an isolated environment; the archive is checked again
    before anything is read from it. A folder that is already complete is kept as it is.
    """
    dest = dest or data_dir()
    if (dest / CLASS_MAP_FILE).is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        requirement = Path(tmp) / "requirements.txt"
        requirement.write_text(f"totalsegmentator=={VERSION} --hash=sha256:{SHA256}\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "totalsegmentator"]
        command += ["--require-hashes", "-r", str(requirement), "-d", tmp]
        try:
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise DataError(
                f"pip could not download totalsegmentator=={VERSION} from PyPI ({exc}); check that "
                f"pip is installed and PyPI reachable, or set {DIR_ENV} to a folder fetched elsewhere"
            ) from None
        install_from_sdist(Path(tmp) / SDIST, dest)
    return dest


def install_from_sdist(archive: Path, dest: Path) -> None:
    """Check ``archive`` against the pinned sha256, then write the kept files and class maps to ``dest``.

    Files are copied out member by member (never ``extractall``), into a temporary sibling folder
    that is renamed into place last, so a folder with ``class_map.json`` is always complete.
    """
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SHA256:
        raise DataError(f"{archive} has sha256 {digest}, not the pinned {SHA256}; delete it and fetch again")
    top = f"totalsegmentator-{VERSION}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:gz") as sdist:
            members = {m.name: m for m in sdist.getmembers() if m.isfile()}
            series = f"{top}/{REFERENCE}/{DICOM_SERIES}/"
            wanted = {f"{top}/{kept}": Path(kept).name for kept in KEPT_FILES}
            wanted |= {
                name: f"{DICOM_SERIES}/{name[len(series) :]}" for name in members if name.startswith(series)
            }
            class_map_source = f"{top}/totalsegmentator/map_to_binary.py"
            missing = [name for name in [*wanted, class_map_source] if name not in members]
            if missing or not any(name.startswith(series) for name in wanted):
                raise DataError(f"{archive} lacks {missing or series}: not the sdist this version expects")
            for name, relative in wanted.items():
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                (staging / relative).write_bytes(_member_bytes(sdist, members[name]))
            class_maps = read_class_maps(_member_bytes(sdist, members[class_map_source]).decode())
        (staging / CLASS_MAP_FILE).write_text(json.dumps(class_maps, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _member_bytes(sdist: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    source = sdist.extractfile(member)
    assert source is not None  # a regular file member always has contents
    return source.read()


def read_class_maps(source: str) -> dict[str, dict[str, str]]:
    """The CT and MR label maps from the literal ``class_map = {...}`` of ``map_to_binary.py``.

    Read as a literal (``ast.literal_eval``): the module is never imported, and nothing of
    TotalSegmentator's is needed at run time.
    """
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "class_map" for t in node.targets):
            maps = ast.literal_eval(node.value)
            return {task: {str(k): v for k, v in maps[task].items()} for task in CLASS_MAPS}
    raise DataError("map_to_binary.py holds no literal class_map: not the sdist this version expects")


def fetched_folder() -> Path:
    folder = data_dir()
    if not (folder / CLASS_MAP_FILE).is_file():
        raise DataError(
            f"the TotalSegmentator example scans are not in {folder}: run `{FETCH_COMMAND}` once "
            f"(`make test` does), or set {DIR_ENV} to a folder it filled"
        )
    return folder


def organ_lookup(class_map: dict[str, str], organs: dict[str, tuple[str, ...]] = ORGANS) -> np.ndarray:
    """Lookup table from TotalSegmentator's label index to our class: ``organs``' n-th entry is class n
    (from 1), made of the TotalSegmentator structures it names; 0 for every other structure."""
    index_of = {name: int(index) for index, name in class_map.items()}
    lookup = np.zeros(max(index_of.values()) + 1, np.int64)
    for ours, (organ, names) in enumerate(organs.items(), start=1):
        for name in names:
            if name not in index_of:
                raise DataError(f"TotalSegmentator's class map has no {name!r} (for {organ})")
            lookup[index_of[name]] = ours
    return lookup


def task_class_map(task: str) -> dict[str, str]:
    """TotalSegmentator's label index -> structure name for ``task`` (a key of :data:`SCANS`)."""
    return json.loads((fetched_folder() / CLASS_MAP_FILE).read_text())[task]


def _case(case_id: str, image_path: Path, label_path: Path, class_map: dict[str, str]) -> Case:
    """One scan with its label map merged into :data:`ORGANS`, after checking they share one grid."""
    image, labels = read_volume(image_path), read_volume(label_path)
    assert image.affine is not None and labels.affine is not None  # NIfTI and DICOM carry one
    if image.array.shape != labels.array.shape or not np.allclose(image.affine, labels.affine, atol=1e-3):
        raise DataError(
            f"{label_path} (shape {labels.array.shape}) does not lie on the grid of {image_path} "
            f"(shape {image.array.shape}): their voxel-to-world matrices differ; fetch again"
        )
    merged = organ_lookup(class_map)[np.rint(labels.array).astype(np.int64)]
    case = case_from_volumes(case_id, image, replace(labels, array=merged), len(CLASS_NAMES))
    case.sources = {"package": f"totalsegmentator {VERSION} sdist", **case.sources}
    return case


def _cases(task: str) -> list[Case]:
    folder, names = fetched_folder(), task_class_map(task)
    return [_case(case_id, folder / image, folder / labels, names) for case_id, image, labels in SCANS[task]]


def ct_cases() -> list[Case]:
    """Two CT scans: the 112-slice NIfTI and the 20-slice DICOM series, both labelled by TotalSegmentator."""
    return _cases("total")


def mr_cases() -> list[Case]:
    """The abdominal MR scan labelled by TotalSegmentator's ``total_mr`` task."""
    return _cases("total_mr")
