"""The totalseg-ct / totalseg-mr built-ins: real TotalSegmentator example scans fetched by ``make test``."""

import hashlib
import io
import shutil
import tarfile

import nibabel as nib
import numpy as np
import pytest

from privacysf.config import DataConfig
from privacysf.data import totalseg
from privacysf.data.prepare import load_cases, prepare, prepare_cases
from privacysf.errors import DataError


def test_organs_are_merged_from_totalsegmentators_own_class_map():
    """Each class counts the voxels of its TotalSegmentator labels (both kidneys in one), nothing else."""
    (mr,) = totalseg.mr_cases()
    raw = np.asarray(nib.load(totalseg.data_dir() / "example_seg_mr.nii.gz").dataobj)
    # total_mr indices as TotalSegmentator 2.18.0 numbers them: liver 5, spleen 1, kidneys 2+3, stomach 6,
    # aorta 23 (map_to_binary.py); the loader finds them by name in the fetched class_map.json
    for ours, indices in enumerate([(5,), (1,), (2, 3), (6,), (23,)], start=1):
        assert (mr.mask == ours).sum() == np.isin(raw, indices).sum() > 0
    assert (mr.mask > 0).sum() < (raw > 0).sum()  # the other 18 structures are background


@pytest.fixture(scope="module")
def ct():
    """The two CT cases, read once (the DICOM series is the slow part)."""
    return load_cases(DataConfig(dataset="totalseg-ct"))


def test_each_scan_holds_the_organs_its_field_of_view_shows(ct):
    cases, info = ct
    present = {c.case_id: set(np.unique(c.mask).tolist()) for c in cases}
    assert info.class_names == ["background", "liver", "spleen", "kidneys", "stomach", "aorta"]
    assert present == {
        "ct-nifti": {0, 1, 2, 3, 4, 5},
        "ct-dicom": {0, 1, 2, 4, 5},
    }  # upper abdomen: no kidney
    dicom = cases[1]
    assert dicom.image.shape == dicom.mask.shape == (512, 512, 20)
    assert dicom.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))


def test_a_label_map_off_its_scans_grid_is_refused(tmp_path, monkeypatch):
    """Same shape and spacing but shifted by one voxel in the world: the loader must not pair them."""
    folder = tmp_path / "fetched"
    shutil.copytree(totalseg.data_dir(), folder)
    labels = nib.load(folder / "example_seg_mr.nii.gz")
    shifted = labels.affine.copy()
    shifted[:3, 3] += 3.0
    nib.save(nib.Nifti1Image(np.asarray(labels.dataobj), shifted), folder / "example_seg_mr.nii.gz")
    monkeypatch.setenv(totalseg.DIR_ENV, str(folder))
    with pytest.raises(DataError, match="does not lie on the grid"):
        totalseg.mr_cases()


@pytest.mark.parametrize("window", [(-160.0, 240.0), (-1350.0, 150.0)])  # default; README's lung window
def test_ct_is_windowed_in_hounsfield_units_as_configured(ct, window):
    """The liver's median HU lands where the configured window puts it after slicing and resizing."""
    cases, info = ct
    liver_hu = float(np.median(cases[0].image[cases[0].mask == 1]))
    assert 0 < liver_hu < 200  # soft tissue, not raw stored values
    data = prepare_cases(cases, info, DataConfig(dataset="totalseg-ct", size=64, ct_window=window))
    assert data.info.normalization == "ct"
    part = data.train.subset(np.array(data.train.case_ids) == "ct-nifti")
    images = part.images[:, 0]
    assert images.min() >= 0.0 and images.max() <= 1.0
    expected = (liver_hu - window[0]) / (window[1] - window[0])
    assert np.median(images[part.masks == 1]) == pytest.approx(expected, abs=0.03)


def test_missing_folder_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv(totalseg.DIR_ENV, str(tmp_path / "never-fetched"))
    for name in ("totalseg-ct", "totalseg-mr"):
        with pytest.raises(DataError, match="run `privacysf data fetch`"):
            prepare(DataConfig(dataset=name))


def _sdist(path, extra: dict[str, bytes]):
    """A small archive laid out like the sdist: the kept files, one DICOM file, the class map, extras."""
    top = f"totalsegmentator-{totalseg.VERSION}"
    contents = {f"{top}/{kept}": kept.encode() for kept in totalseg.KEPT_FILES}
    contents[f"{top}/{totalseg.REFERENCE}/{totalseg.DICOM_SERIES}/CT.1.3.12.7"] = b"dicom"
    contents[f"{top}/totalsegmentator/map_to_binary.py"] = (
        b'class_map = {"total": {5: "liver"}, "total_mr": {5: "liver"}, "other": {}}\n'
        b'class_map["total_v3"] = class_map["total"].copy()\n'
    )
    contents.update(extra)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in contents.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def test_install_keeps_only_the_files_the_datasets_read(tmp_path, monkeypatch):
    top = f"totalsegmentator-{totalseg.VERSION}"
    archive = _sdist(tmp_path / "sdist.tar.gz", {f"{top}/tests/reference_files/example_seg.nii.gz": b"x"})
    monkeypatch.setattr(totalseg, "SHA256", hashlib.sha256(archive.read_bytes()).hexdigest())
    dest = tmp_path / "share" / "totalseg"
    totalseg.install_from_sdist(archive, dest)
    kept = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert kept == {
        "LICENSE",
        "example_ct.nii.gz",
        "example_seg_fast_force_split.nii.gz",
        "example_seg_dicom.nii.gz",
        "example_mr_sm.nii.gz",
        "example_seg_mr.nii.gz",
        "example_ct_dicom/CT.1.3.12.7",
        "class_map.json",
    }
    assert (dest / "example_ct_dicom" / "CT.1.3.12.7").read_bytes() == b"dicom"
    assert (dest / "class_map.json").read_text().replace(" ", "").replace("\n", "") == (
        '{"total":{"5":"liver"},"total_mr":{"5":"liver"}}'
    )
    assert [p.name for p in dest.parent.iterdir()] == ["totalseg"]  # no staging folder left behind


def test_install_refuses_an_archive_that_is_not_the_pinned_one(tmp_path):
    archive = _sdist(tmp_path / "sdist.tar.gz", {})
    with pytest.raises(DataError, match="not the pinned"):
        totalseg.install_from_sdist(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_fetch_keeps_a_complete_folder_without_calling_pip(monkeypatch):
    """`make test` runs the fetch on every fresh stamp: a filled folder must not download again."""

    def no_download(*args, **kwargs):
        raise AssertionError("pip was called for a folder that is already complete")

    monkeypatch.setattr(totalseg.subprocess, "run", no_download)
    assert totalseg.fetch() == totalseg.data_dir()
