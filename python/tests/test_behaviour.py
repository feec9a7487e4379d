"""Errors, threads, Ctrl-C, memory, evaluation."""

import json
import os
import shutil
import signal
import threading
import time

import nibabel as nib
import numpy as np
import pytest

import rlu2net
from conftest import run_cli


def cli_error(cli, *args) -> str:
    r = run_cli(cli, *args)
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line[len("error: "):]


def test_a_truncated_file_is_a_value_error_with_the_clis_message(model, images, cli, run, work):
    bad = work / "truncated.nii.gz"
    raw = open(images["ct"], "rb").read()
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError) as e:
        model.segment(ct=bad)
    assert str(e.value) == cli_error(cli, "infer", "--model", run, "--ct", bad, "--out", work / "x.nii.gz", "--device", "cpu")
    assert str(bad) in str(e.value)


def test_missing_files_are_file_not_found(model, run, cli, work):
    with pytest.raises(FileNotFoundError) as e:
        rlu2net.load(work / "no-such-model.rlu2net")
    assert str(e.value) == cli_error(cli, "infer", "--model", work / "no-such-model.rlu2net", "--ct", "x.nii.gz", "--out", "y.nii.gz")
    with pytest.raises(FileNotFoundError):
        model.segment(ct=work / "no-such-image.nii.gz")


def test_bad_arrays_are_value_errors(model, images):
    a = np.asarray(nib.load(images["ct"]).dataobj).astype(np.float32)
    with pytest.raises(ValueError, match="4D"):
        model.segment(ct=np.stack([a, a], axis=-1), spacing=(1, 1, 1))
    b = a.copy()
    b[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match=r"1 voxel\(s\) are NaN or infinite \(the first at voxel \[3, 4, 5\]\)"):
        model.segment(ct=b, spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="affine"):
        model.segment(ct=a)
    with pytest.raises(ValueError, match="affine"):
        model.segment(ct=a, affine=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="labels"):
        model.segment(ct=a, spacing=(1, 1, 1), labels="nope")
    with pytest.raises(ValueError):
        rlu2net.load(".", device="tpu")


def test_another_thread_runs_during_segment(model, images):
    ticks = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.002)

    t = threading.Thread(target=count)
    img = nib.load(images["ct"])
    a = np.asarray(img.dataobj)
    t.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    for _ in range(3):
        model.segment(ct=a, affine=img.affine)
    t1 = time.perf_counter()
    stop.set()
    t.join()
    during = [x for x in ticks if t0 < x < t1]
    # with the GIL held the counter would stop for the whole call
    assert t1 - t0 > 0.1
    assert len(during) > 0.25 * (t1 - t0) / 0.002, (len(during), t1 - t0)


def test_threads_share_one_model(run, images):
    """Three threads on one model of one CPU thread: each waits its turn (no deadlock in
    the pool), and each gets what a lone call gets."""
    m = rlu2net.load(run, device="cpu", threads=1)
    want = m.segment(ct=images["ct"]).labels
    got = [None] * 3

    def go(i):
        got[i] = m.segment(ct=images["ct"]).labels

    ts = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in ts)
    for g in got:
        np.testing.assert_array_equal(g, want)


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt, as in a terminal (a process started in the
    background by a shell inherits SIGINT ignored, and Python then leaves it so)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _interrupt_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_stops_segment(model, run, images, ctrl_c):
    t0 = time.perf_counter()
    model.segment(ct=images["ct"], mr=images["mr"])
    one = time.perf_counter() - t0
    # eight mirrored passes: about 8 × as long as one
    slow = rlu2net.load(run, device="cpu", tta=True)
    timer = _interrupt_after(0.3)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        slow.segment(ct=images["ct"], mr=images["mr"])
    took = time.perf_counter() - t0
    timer.join()
    assert took < 0.3 + 0.5 * 8 * one, (took, one)
    # the model still works afterwards
    assert slow.segment(ct=images["ct"]).labels.size > 0


def test_ctrl_c_stops_training_with_a_checkpoint(data, work, ctrl_c):
    out = work / "interrupted"
    timer = _interrupt_after(4.0)
    with pytest.raises(KeyboardInterrupt):
        rlu2net.train(data, out, preset="tiny", epochs=200, steps_per_epoch=10, seed=2, progress=False)
    timer.join()
    state = json.loads((out / "checkpoints" / "last" / "state.json").read_text())
    done = state["step"]
    assert 0 < done < 2000
    s = rlu2net.train(resume=out, epochs=(done // 10) + 1, progress=False)
    assert s["steps"] > done


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_memory_stays_flat_over_50_calls(model, images):
    img = nib.load(images["ct"])
    # a corner of the CT (a few windows), so that 50 calls stay quick
    a = np.asarray(img.dataobj)[:48, :48, :48]
    model.segment(ct=a, affine=img.affine)
    first = _rss_mb()
    for _ in range(50):
        seg = model.segment(ct=a, affine=img.affine, probabilities=True)
        del seg
    grown = _rss_mb() - first
    assert grown < 50, f"RSS grew by {grown:.0f} MB over 50 calls"


def test_evaluate_agrees_with_the_clis_report(cli, run, data, work):
    preds = work / "preds"
    r = run_cli(cli, "infer", "--model", run, "--input-dir", data, "--output-dir", preds, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = run_cli(cli, "evaluate", "--pred", preds, "--truth", data, "--out", work / "ev")
    assert r.returncode == 0, r.stderr
    want = json.loads((work / "ev" / "report.json").read_text())
    got = rlu2net.evaluate(preds, data)
    assert isinstance(got["cases"][0]["confusion"], np.ndarray)
    for g, w in zip(got["cases"], want["cases"]):
        assert g["case"] == w["case"]
        assert g["dice"] == w["dice"] and g["hd95"] == w["hd95"]
        np.testing.assert_array_equal(g["confusion"], np.asarray(w["confusion"]))
    for g, w in zip(got["means"], want["means"]):
        assert g["mean_dice"] == w["mean_dice"]
    # one case from arrays: the same numbers
    case = want["cases"][0]
    name = case["case"]
    split = name.rsplit("_", 1)[0]
    truth = nib.load(str(data / split / f"{name}_label.nii.gz"))
    pred = nib.load(str(preds / f"{name}_label.nii.gz"))
    one = rlu2net.evaluate(pred, truth, modality=case["modality"].lower())
    assert one["dice"] == case["dice"] and one["hd95"] == case["hd95"]
    assert one["confusion"].shape == (8, 8)
    np.testing.assert_array_equal(one["confusion"], np.asarray(case["confusion"]))


def test_read_gives_what_segment_reads(images):
    img = rlu2net.read(images["ct"])
    ref = nib.load(images["ct"])
    np.testing.assert_array_equal(img.array, np.asarray(ref.dataobj).astype(np.float32))
    np.testing.assert_allclose(img.affine, ref.affine)
    assert img.array.dtype == np.float32
