"""NIfTI reading/writing: axes and affine kept, uint8 label maps, one clear error per bad file."""

import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

from ddmr_core.errors import DataError
from ddmr_core.data.io import load_image, load_image_and_seg, load_label_map, save_image, save_label_map, spacing_from_affine
from ddmr_core.data.files import atomic_path


def oblique_affine(spacing=(0.8, 1.2, 2.5), angle=0.3):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = np.diag([-1, 1, 1]) @ rot @ np.diag(spacing)
    a[:3, 3] = (10.0, -20.0, 5.0)
    return a


def test_round_trip_keeps_array_axes_and_affine(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(5, 6, 7)).astype(np.float32)
    labels = rng.integers(0, 4, size=(5, 6, 7)).astype(np.uint8)
    aff = oblique_affine()
    save_image(tmp_path / "img.nii.gz", image, aff)
    save_label_map(tmp_path / "seg.nii.gz", labels, aff)
    # an independent reader (nibabel directly) sees the same array and affine
    ref = nib.load(str(tmp_path / "img.nii.gz"))
    np.testing.assert_array_equal(np.asarray(ref.dataobj), image)
    np.testing.assert_allclose(ref.affine, aff, atol=1e-5)
    assert ref.header.get_data_dtype() == np.float32
    img2, seg2, aff2 = load_image_and_seg(tmp_path / "img.nii.gz", tmp_path / "seg.nii.gz")
    np.testing.assert_array_equal(img2, image)
    np.testing.assert_array_equal(seg2, labels)
    assert seg2.dtype == np.uint8
    assert nib.load(str(tmp_path / "seg.nii.gz")).header.get_data_dtype() == np.uint8
    np.testing.assert_allclose(spacing_from_affine(aff2), (0.8, 1.2, 2.5), atol=1e-5)


def test_trailing_singleton_axis_is_accepted(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6, 1), np.float32), np.eye(4)), str(tmp_path / "a.nii"))
    image, _ = load_image(tmp_path / "a.nii")
    assert image.shape == (4, 5, 6)


def test_float_label_map_with_whole_values_is_converted(tmp_path):
    nib.save(nib.Nifti1Image(np.array([0, 1, 2, 7], np.float32).reshape(1, 2, 2).repeat(3, 0), np.eye(4)),
             str(tmp_path / "s.nii.gz"))
    seg, _ = load_label_map(tmp_path / "s.nii.gz")
    assert seg.dtype == np.uint8 and set(np.unique(seg)) == {0, 1, 2, 7}


@pytest.mark.parametrize(
    "shape, message", [((4, 5, 6, 2), "4-D"), ((4, 5), "2-D"), ((4, 5, 1), "3-D volume")]
)
def test_wrong_dimensionality_names_the_file(tmp_path, shape, message):
    p = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(p))
    with pytest.raises(DataError, match=message) as err:
        load_image(p)
    assert "bad.nii.gz" in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        load_image(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(err.value)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    with pytest.raises(DataError, match="cannot be read") as err:
        load_image(junk)
    assert "junk.nii.gz" in str(err.value)
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(DataError, match="empty.nii"):
        load_label_map(tmp_path / "empty.nii")


def test_label_map_with_fractions_or_out_of_range_values(tmp_path):
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 0.5, np.float32), np.eye(4)), str(tmp_path / "p.nii.gz"))
    with pytest.raises(DataError, match="non-integer"):
        load_label_map(tmp_path / "p.nii.gz")
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 300, np.int16), np.eye(4)), str(tmp_path / "big.nii.gz"))
    with pytest.raises(DataError, match="0..255"):
        load_label_map(tmp_path / "big.nii.gz")


def test_rgb_and_complex_volumes_are_refused_by_name(tmp_path):
    rgb = np.zeros((3, 3, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(tmp_path / "rgb.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.complex64), np.eye(4)), str(tmp_path / "c.nii.gz"))
    for name in ("rgb.nii.gz", "c.nii.gz"):
        for load in (load_image, load_label_map):
            with pytest.raises(DataError, match=f"{name}.*integer or real"):
                load(tmp_path / name)


def test_image_and_segmentation_on_different_grids(tmp_path):
    save_image(tmp_path / "img.nii.gz", np.zeros((4, 5, 6)), np.eye(4))
    save_label_map(tmp_path / "small.nii.gz", np.zeros((4, 5, 5)), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    save_label_map(tmp_path / "shifted.nii.gz", np.zeros((4, 5, 6)), shifted)
    with pytest.raises(DataError, match="shape") as err:
        load_image_and_seg(tmp_path / "img.nii.gz", tmp_path / "small.nii.gz")
    assert "small.nii.gz" in str(err.value)
    with pytest.raises(DataError, match="affines") as err:
        load_image_and_seg(tmp_path / "img.nii.gz", tmp_path / "shifted.nii.gz")
    assert "shifted.nii.gz" in str(err.value)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("bad, words", [
    (np.zeros((4, 4, 4, 2)), "4-D"),
    (np.zeros((4, 1, 4)), "a 3-D volume is needed"),
    (np.full((4, 4, 4), np.nan), "NaN"),
])
def test_arrays_get_the_checks_and_messages_of_files(tmp_path, bad, words):
    """register.read_volume (arrays, tensors, nibabel images) checks as io reads files."""
    import torch

    from ddmr_core.data.io import as_image
    from ddmr_core.registration.register import read_volume

    save_image(tmp_path / "bad.nii.gz", bad.astype(np.float32), np.eye(4)) if bad.ndim == 3 else None
    with pytest.raises(DataError, match=words):
        as_image(bad, np.eye(4), "volume X")
    with pytest.raises(DataError, match=f"fixed image.*{words}"):
        read_volume(torch.from_numpy(bad), name="fixed image")
    if bad.ndim == 3:
        with pytest.raises(DataError, match=f"bad.nii.gz.*{words}"):
            load_image(tmp_path / "bad.nii.gz")


def test_read_volume_of_arrays_tensors_and_nibabel_images():
    import torch

    from ddmr_core.registration.register import read_volume

    labels = np.random.default_rng(1).integers(0, 5, size=(4, 5, 6))
    aff = oblique_affine()
    for obj in (labels.astype(np.float64), labels.astype(bool) * 3, torch.from_numpy(labels)[None, None],
                nib.Nifti1Image(labels.astype(np.int16), aff)):
        got, got_aff = read_volume(obj, aff, label=True)
        assert got.dtype == np.uint8 and got.shape == (4, 5, 6)
        np.testing.assert_allclose(got_aff, aff)
    assert read_volume(labels.astype(bool), label=True)[0].max() == 1
    with pytest.raises(DataError, match="seg.*non-integer"):
        read_volume(labels + 0.5, name="seg", label=True)
    with pytest.raises(DataError, match="seg.*outside 0..255"):
        read_volume(labels - 1, name="seg", label=True)
    with pytest.raises(DataError, match="image.*singular or invalid affine"):
        read_volume(labels.astype(np.float32), np.zeros((4, 4)))


def test_compressed_nifti_is_one_standard_gzip_stream_of_the_uncompressed_file(tmp_path, monkeypatch):
    # .nii.gz is compressed in blocks on several threads: Python's own gzip must read it
    # back as exactly the bytes of the .nii, for C- and Fortran-ordered arrays alike
    import ddmr_core.data.io as io_mod

    monkeypatch.setattr(io_mod, "GZIP_BLOCK", 1 << 16)  # several blocks for a small volume
    monkeypatch.setattr(io_mod, "gzip_threads", lambda: 3)
    rng = np.random.default_rng(5)
    image = rng.normal(size=(40, 50, 30)).astype(np.float32)
    affine = oblique_affine()
    for name, array in (("c", image), ("f", np.asfortranarray(image))):
        save_image(tmp_path / f"{name}.nii.gz", array, affine)
        save_image(tmp_path / f"{name}.nii", array, affine)
        raw = (tmp_path / f"{name}.nii").read_bytes()
        with gzip.open(tmp_path / f"{name}.nii.gz", "rb") as fh:
            assert fh.read() == raw
        one = zlib.decompressobj(31)  # a single gzip member holds it all
        assert one.decompress((tmp_path / f"{name}.nii.gz").read_bytes()) == raw and one.eof and not one.unused_data
        back = nib.load(str(tmp_path / f"{name}.nii.gz"))
        np.testing.assert_array_equal(np.asarray(back.dataobj), image)
    assert (tmp_path / "c.nii").read_bytes() == (tmp_path / "f.nii").read_bytes()


@pytest.mark.parametrize("kind", ["nifti1", "nifti2", "big-endian", "scaled"])
def test_compressed_files_read_as_nibabel_reads_them(tmp_path, kind):
    # .nii.gz is decompressed by ISA-L and parsed from memory: voxels (scaling applied) and
    # affine must be nibabel's own, for NIfTI-1 and -2, either byte order, scl_slope set
    rng = np.random.default_rng(7)
    data = rng.integers(0, 900, size=(9, 8, 7)).astype(np.int16)
    affine = oblique_affine()
    img = (nib.Nifti2Image if kind == "nifti2" else nib.Nifti1Image)(data, affine)
    if kind == "big-endian":
        img = nib.Nifti1Image(data.astype(">i2"), affine, header=nib.Nifti1Header(endianness=">"))
    if kind == "scaled":
        img.header.set_slope_inter(0.5, 3.0)
    path = tmp_path / "img.nii.gz"
    nib.save(img, str(path))
    reference = nib.load(str(path))
    from ddmr_core.data.io import _load_gz_nifti

    assert _load_gz_nifti(path) is not None  # the in-memory path read it, not the fallback
    got, got_affine = load_image(path)
    np.testing.assert_allclose(got, np.asarray(reference.dataobj), rtol=1e-6)
    np.testing.assert_allclose(got_affine, reference.affine)


def test_a_prefetched_file_reads_as_nibabel_reads_it_once_and_never_stale(tmp_path):
    """ddmr register reads its inputs in the background while torch imports
    (ddmr_core.data.prefetch): the reader gets what nibabel reads from the file; a file
    rewritten after its prefetch is read again, not served from the stale copy; a
    prefetched file is handed out once; a missing or corrupt file still gets the reader's
    own error."""
    import os

    from ddmr_core.data import prefetch

    rng = np.random.default_rng(3)
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    save_image(a, rng.random((9, 8, 7)).astype(np.float32), oblique_affine())
    save_image(b, rng.random((9, 8, 7)).astype(np.float32), np.eye(4))
    prefetch.prefetch([a, None, b, tmp_path / "missing.nii.gz"])
    raw = prefetch.take(a)
    assert raw == gzip.decompress(a.read_bytes())
    assert prefetch.take(a) is None  # once
    img, aff = load_image(a)  # read again from the file, the same
    np.testing.assert_array_equal(img, nib.load(a).get_fdata(dtype=np.float32))
    # b rewritten (another size and time) after its prefetch: the new content is read
    new = rng.random((5, 6, 7)).astype(np.float32)
    save_image(b, new, np.eye(4))
    os.utime(b, ns=(1, 1))
    got, _ = load_image(b)
    np.testing.assert_array_equal(got, new)
    prefetch.discard()
    # a corrupt file, prefetched: the reader's message, not a prefetch failure
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    prefetch.prefetch([bad])
    with pytest.raises(DataError, match="cannot be read as NIfTI"):
        load_image(bad)
    prefetch.discard()
