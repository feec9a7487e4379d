"""Shared fixtures: a small SynthWHS set, a briefly trained `tiny` run, the CLI binary
of the same checkout, and the CLI's own predictions to compare with."""

import glob
import os
import subprocess
from pathlib import Path

import pytest

import rlu2net

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cli() -> str:
    path = os.environ.get("RLU2NET_CLI", str(REPO / "target" / "release" / "rlu2net"))
    if not os.path.isfile(path):
        pytest.fail(f"{path}: the rlu2net binary is needed (cargo build --release, or set RLU2NET_CLI)")
    return path


def run_cli(cli: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([cli, *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rlu2net")


@pytest.fixture(scope="session")
def data(work: Path) -> Path:
    d = work / "data"
    m = rlu2net.synth(d, cases=2, test_cases=1, seed=5, scale="small")
    assert len(m["cases"]) == 3
    return d


@pytest.fixture(scope="session")
def run(work: Path, data: Path) -> Path:
    out = work / "run"
    s = rlu2net.train(data, out, preset="tiny", epochs=2, steps_per_epoch=10, seed=1, progress=False)
    assert s["steps"] == 20 and not s["stopped_early"], s
    return out


@pytest.fixture(scope="session")
def model(run: Path) -> rlu2net.Model:
    return rlu2net.load(run, device="cpu")


@pytest.fixture(scope="session")
def images(data: Path) -> dict:
    one = lambda pattern: glob.glob(str(data / pattern))[0]  # noqa: E731
    return {"ct": one("ct_test/*_image.nii.gz"), "mr": one("mr_test/*_image.nii.gz")}


@pytest.fixture(scope="session")
def cli_out(cli: str, run: Path, images: dict, work: Path) -> dict:
    """The CLI's label maps: the pair, and each image alone."""
    out = work / "cli"
    r = run_cli(cli, "infer", "--model", run, "--ct", images["ct"], "--mr", images["mr"],
                "--out", out / "pair_ct.nii.gz", "--mr-out", out / "pair_mr.nii.gz",
                "--statistics", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    for m in ("ct", "mr"):
        r = run_cli(cli, "infer", "--model", run, f"--{m}", images[m],
                    "--out", out / f"single_{m}.nii.gz", "--device", "cpu")
        assert r.returncode == 0, r.stderr
    return {k: out / f"{k}.nii.gz" for k in ("pair_ct", "pair_mr", "single_ct", "single_mr")} | {
        "statistics": out / "statistics.json"
    }
