"""``privacysf segment``: an image file in, a mask file out (or a folder of each), through a trained run.

The center preprocesses and encodes the image, the server maps the code, the center decodes the
returned mask code and undoes the resizing and the reorientation to RAS, so the mask is written in
the input's own geometry: same shape, voxel order and affine/header (NIfTI) or spacing, origin and
direction (NRRD/MHA) as the input, voxel for voxel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from privacysf.center.pipeline import KeyedMapper, Mapper
from privacysf.common.runs import atomic_write
from privacysf.data.cases import Case
from privacysf.data.preprocess import restore_slices, slice_case
from privacysf.data.readers import (
    ITK_SUFFIXES,
    LPS_TO_RAS,
    NIFTI_SUFFIXES,
    PICTURE_SUFFIXES,
    TIFF_SUFFIXES,
    Volume,
    file_stem,
    is_image_entry,
    read_volume,
)
from privacysf.errors import ConfigError, DataError
from privacysf.workflows.fit import reload_center
from privacysf.workflows.inprocess import load_server

WRITABLE_SUFFIXES = NIFTI_SUFFIXES + (".nrrd", ".mha") + PICTURE_SUFFIXES + TIFF_SUFFIXES


Segmenter = Callable[[Volume], np.ndarray]
"""Labels for a volume, laid out like its (RAS-reoriented) array."""

CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")
"""nnU-Net's channel tag on an image name: ``case_0000`` is channel 0 of ``case``."""


def load_segmenter(run_dir: Path, device: str | None = None, server: Mapper | None = None) -> Segmenter:
    """The run's center models, loaded once; ``server`` maps the codes (default: the run's own mapper).

    A run that encrypts its queries hands the mapper (its own, or the service's) the center's public
    evaluation keys first, unless it holds them already."""
    cfg, center = reload_center(run_dir, device)
    mapper = server if server is not None else load_server(cfg, run_dir)
    if center.encryption is not None:
        if not isinstance(mapper, KeyedMapper):
            raise ConfigError(f"{run_dir} encrypts its queries, and this server cannot take CKKS keys")
        if center.encryption.key_id not in mapper.key_ids():
            mapper.register_keys(center.encryption.evaluation_keys().encode())
    normalization = json.loads((run_dir / "data.json").read_text())["normalization"]
    axis = cfg.data.axis

    def segment(volume: Volume) -> np.ndarray:
        shape = volume.array.shape
        case = Case("input", volume.array.astype(np.float32), np.zeros(shape, np.int64), volume.spacing)
        slices = slice_case(case, axis, cfg.data.size, normalization, cfg.data.ct_window, drop_empty=False)
        labels = center.segment(mapper, slices.images)
        plane = tuple(s for i, s in enumerate(shape) if i != axis)
        return np.moveaxis(restore_slices(labels, plane), 0, axis)

    return segment


def segment_file(
    run_dir: Path, image: Path, output: Path, device: str | None = None, server: Mapper | None = None
) -> Path:
    """Segment one image file (or DICOM series folder) into the mask file ``output``."""
    if output.is_dir():
        raise DataError(f"{output} is a folder; give the mask file to write, e.g. {output / 'mask.nii.gz'}")
    if not output.name.lower().endswith(WRITABLE_SUFFIXES):
        raise DataError(f"cannot write a mask to {output}: use .nii.gz, .nrrd, .mha, .png or .tif")
    return _segment_into(load_segmenter(run_dir, device, server), image, output)


def segment_folder(
    run_dir: Path,
    images: Path,
    output: Path,
    device: str | None = None,
    server: Mapper | None = None,
    report: Callable[[str], None] = print,
) -> list[Path]:
    """Segment every image in ``images`` (nnU-Net's ``imagesTs/``) into ``output``, one line per file.

    Masks are named like nnU-Net's predictions: ``case_0000.nii.gz`` -> ``case.nii.gz``; a DICOM
    series folder gives ``<folder>.nii.gz``. Other channels (``case_0001``) are skipped: a run
    segments from one channel.
    """
    entries = sorted(p for p in images.iterdir() if is_image_entry(p))
    todo = [entry for entry in entries if _channel(entry) in (None, "0000")]
    if not todo:
        raise DataError(f"{images} holds no image files to segment")
    if output.exists() and not output.is_dir():
        raise DataError(f"{output} is a file; give a folder to write one mask per image into")
    output.mkdir(parents=True, exist_ok=True)
    segmenter = load_segmenter(run_dir, device, server)
    written = []
    for number, entry in enumerate(todo, 1):
        mask = output / _mask_name(entry)
        written.append(_segment_into(segmenter, entry, mask))
        report(f"[{number}/{len(todo)}] {entry.name} -> {mask}")
    if skipped := len(entries) - len(todo):
        report(f"skipped {skipped} file(s) of other channels (_0001, ...): a run segments channel 0")
    return written


def _channel(image: Path) -> str | None:
    tag = CHANNEL_SUFFIX.search(file_stem(image))
    return tag.group(1) if tag else None


def _mask_name(image: Path) -> str:
    """The image's name less its channel tag, in its own format where a mask can be written so."""
    name = image.name.lower()
    kept = NIFTI_SUFFIXES + (".nrrd", ".mha", ".png") + TIFF_SUFFIXES
    suffix = next(
        (s for s in kept if name.endswith(s)), ".png" if name.endswith(PICTURE_SUFFIXES) else ".nii.gz"
    )
    return CHANNEL_SUFFIX.sub("", file_stem(image)) + suffix


def _segment_into(segmenter: Segmenter, image: Path, output: Path) -> Path:
    volume = read_volume(image)
    labels = segmenter(volume).astype(np.uint8)
    atomic_write(output, lambda tmp: _write_mask(tmp, output.name.lower(), labels, volume))
    return output


def _write_mask(tmp: Path, name: str, labels: np.ndarray, volume: Volume) -> None:
    """Write ``labels`` (laid out like ``volume.array``) voxel for voxel on the input file's own grid."""
    labels = volume.in_file_order(labels)
    if name.endswith(NIFTI_SUFFIXES):
        _write_nifti(tmp, name, labels, volume)
    elif name.endswith((".nrrd", ".mha")):
        _write_itk(tmp, labels, volume)
    elif name.endswith(TIFF_SUFFIXES):
        import tifffile

        tifffile.imwrite(tmp, np.moveaxis(labels, -1, 0) if labels.shape[-1] > 1 else labels[..., 0])
    else:
        from PIL import Image

        if labels.shape[-1] != 1:
            raise DataError("a PNG can hold one slice only; write a 3-D mask as .nii.gz")
        Image.fromarray(labels[..., 0]).save(tmp, format="PNG")


def _write_nifti(tmp: Path, name: str, labels: np.ndarray, volume: Volume) -> None:
    """A NIfTI input lends its own header (qform, sform, units, ...), so viewers overlay the two."""
    import gzip

    import nibabel as nib

    if volume.path.name.lower().endswith(NIFTI_SUFFIXES):
        source = nib.load(str(volume.path))
        assert isinstance(source, nib.Nifti1Image)  # what nib.load returns for a NIfTI-1 or -2 file
        nifti = nib.Nifti1Image(labels, source.affine, source.header)
        nifti.header["cal_min"] = nifti.header["cal_max"] = 0  # the input's display window, not a label's
    else:
        nifti = nib.Nifti1Image(labels, volume.file_affine())
    nifti.set_data_dtype(np.uint8)
    raw = nifti.to_bytes()
    tmp.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)


def _write_itk(tmp: Path, labels: np.ndarray, volume: Volume) -> None:
    """An ITK input lends its spacing, origin and direction as stored; others convert their affine."""
    import SimpleITK as sitk

    if volume.path.name.lower().endswith(ITK_SUFFIXES):
        source = sitk.ImageFileReader()
        source.SetFileName(str(volume.path))
        source.ReadImageInformation()  # the geometry only, not the voxels again
        spacing, origin, direction = source.GetSpacing(), source.GetOrigin(), source.GetDirection()
        if source.GetDimension() == 2:
            labels = labels[..., 0]
    else:
        lps = LPS_TO_RAS @ volume.file_affine()  # the flip is its own inverse
        norms = np.linalg.norm(lps[:3, :3], axis=0)
        spacing = tuple(float(v) for v in norms)
        origin = tuple(float(v) for v in lps[:3, 3])
        direction = tuple(float(v) for v in (lps[:3, :3] / norms).ravel())
    image = sitk.GetImageFromArray(labels.T)  # ITK's arrays are (z, y, x)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(tmp))
