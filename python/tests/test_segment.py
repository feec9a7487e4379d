"""`Model.segment` against the CLI, voxel for voxel, from every kind of input."""

import json

import nibabel as nib
import numpy as np
import pytest

import rlu2net
from conftest import run_cli


def cli_labels(path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def test_from_paths_paired_and_single(model, images, cli_out):
    ct, mr = model.segment(ct=images["ct"], mr=images["mr"])
    assert ct.labels.dtype == np.int16
    np.testing.assert_array_equal(ct.labels, cli_labels(cli_out["pair_ct"]))
    np.testing.assert_array_equal(mr.labels, cli_labels(cli_out["pair_mr"]))
    for m in ("ct", "mr"):
        alone = model.segment(**{m: images[m]})
        np.testing.assert_array_equal(alone.labels, cli_labels(cli_out[f"single_{m}"]))
    # to_nifti: the CLI's file, as nibabel holds it
    img, ref = ct.to_nifti(), nib.load(str(cli_out["pair_ct"]))
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    np.testing.assert_allclose(img.header.get_zooms(), ref.header.get_zooms(), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(img.dataobj), cli_labels(cli_out["pair_ct"]))


def test_from_nibabel_images(model, images, cli_out):
    ct_img, mr_img = nib.load(images["ct"]), nib.load(images["mr"])
    ct, mr = model.segment(ct=ct_img, mr=mr_img)
    np.testing.assert_array_equal(ct.labels, cli_labels(cli_out["pair_ct"]))
    np.testing.assert_array_equal(mr.labels, cli_labels(cli_out["pair_mr"]))
    np.testing.assert_allclose(ct.affine, ct_img.affine)
    alone = model.segment(mr=mr_img)
    np.testing.assert_array_equal(alone.labels, cli_labels(cli_out["single_mr"]))


@pytest.mark.parametrize("order", ["C", "F"])
def test_from_numpy_arrays_in_either_order(model, images, cli_out, order):
    ct_img, mr_img = nib.load(images["ct"]), nib.load(images["mr"])
    # any dtype: the stored int16 voxels, in the asked memory order
    a = np.asarray(ct_img.dataobj).astype(np.int16, order=order)
    b = np.asarray(mr_img.dataobj).astype(np.float64, order=order)
    assert a.flags["F_CONTIGUOUS" if order == "F" else "C_CONTIGUOUS"]
    ct, mr = model.segment(
        ct=rlu2net.Image(a, affine=ct_img.affine), mr=rlu2net.Image(b, affine=mr_img.affine)
    )
    np.testing.assert_array_equal(ct.labels, cli_labels(cli_out["pair_ct"]))
    np.testing.assert_array_equal(mr.labels, cli_labels(cli_out["pair_mr"]))
    alone = model.segment(ct=a, affine=ct_img.affine)
    np.testing.assert_array_equal(alone.labels, cli_labels(cli_out["single_ct"]))


def test_a_non_ras_grid_comes_back_as_given(model, images, cli, run, work):
    """The same voxels stored with axes permuted and one flipped: the output is on that
    grid (shape and affine), equals the CLI's on the same file, and is the RAS result
    with the same permutation (no x/z swap anywhere)."""
    img = nib.load(images["ct"])
    a = np.asarray(img.dataobj)
    # new voxel (i, j, k) = old voxel (k, n1 - 1 - j, i)
    b = np.ascontiguousarray(a.transpose(2, 1, 0)[:, ::-1, :])
    old_of_new = np.array(
        [[0, 0, 1, 0], [0, -1, 0, a.shape[1] - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
    )
    affine = img.affine @ old_of_new
    assert nib.aff2axcodes(affine) != ("R", "A", "S")
    path = work / "non_ras.nii.gz"
    out = nib.Nifti1Image(b, affine)
    out.header.set_zooms(tuple(img.header.get_zooms()[i] for i in (2, 1, 0)))
    nib.save(out, str(path))

    seg = model.segment(ct=b, affine=affine)
    assert seg.labels.shape == b.shape
    np.testing.assert_allclose(seg.affine, affine)
    r = run_cli(cli, "infer", "--model", run, "--ct", path, "--out", work / "non_ras_cli.nii.gz", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(seg.labels, cli_labels(work / "non_ras_cli.nii.gz"))
    ras = model.segment(ct=img)
    np.testing.assert_array_equal(seg.labels, ras.labels.transpose(2, 1, 0)[:, ::-1, :])


def test_classes_probabilities_and_progress(model, images):
    seen = []
    seg = model.segment(
        ct=images["ct"], labels="classes", probabilities=True, progress=lambda d, t: seen.append((d, t))
    )
    mm = model.segment(ct=images["ct"])
    assert seg.labels.dtype == np.uint8 and seg.labels.max() <= 7
    np.testing.assert_array_equal(np.asarray(rlu2net.LABEL_VALUES)[seg.labels], mm.labels)
    p = seg.probabilities
    assert p.shape[0] == 8 and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-4)
    assert seg.probabilities_affine.shape == (4, 4)
    assert seen and seen[-1][0] == seen[-1][1] > 0, seen
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_statistics_equal_the_clis(model, images, cli_out):
    ct, mr = model.segment(ct=images["ct"], mr=images["mr"])
    want = json.loads(cli_out["statistics"].read_text())
    got_ct = rlu2net.statistics(ct, images["ct"])
    got_mr = rlu2net.statistics(mr, images["mr"], modality="mr")
    assert got_ct == want["ct"]
    assert got_mr == want["mr"]
    # a bare label array takes the image's grid
    assert rlu2net.statistics(ct.labels, nib.load(images["ct"])) == want["ct"]


def test_progress_on_a_tqdm_bar(model, images, capsys):
    pytest.importorskip("tqdm")
    model.segment(ct=images["ct"], progress=True)
    err = capsys.readouterr().err
    assert "segment" in err and "100%" in err, err
