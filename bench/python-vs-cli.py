"""`model.segment` on arrays in memory against `rlu2net infer` on the same files, in one
sitting: each timed N times (median), the CLI as a whole process (start, model load, read,
predict, write), the Python call with the model loaded once and the volumes already in
memory; also the Python call from the paths (reading included) and the model's load.

    python bench/python-vs-cli.py --cli target/release/rlu2net --data DATA --run RUN [--runs 5]

Needs the package (pip install ./python) and nibabel. Prints one table (markdown).
"""

import argparse
import glob
import os
import statistics
import subprocess
import tempfile
import time

import nibabel as nib
import numpy as np

import rlu2net


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    ct = sorted(glob.glob(os.path.join(a.data, "ct_test", "*_image.nii.gz")))[0]
    mr = sorted(glob.glob(os.path.join(a.data, "mr_test", "*_image.nii.gz")))[0]
    out = tempfile.mkdtemp()
    rows = []

    def cli(*inputs):
        args = [a.cli, "infer", "--model", a.run, "--out", os.path.join(out, "c.nii.gz"), "--device", "cpu"]
        for flag, path in inputs:
            args += [flag, path]
        subprocess.run(args, check=True, capture_output=True)

    t0 = time.perf_counter()
    model = rlu2net.load(a.run, device="cpu")
    load_s = time.perf_counter() - t0
    ci, mi = nib.load(ct), nib.load(mr)
    ca, ma = np.asarray(ci.dataobj), np.asarray(mi.dataobj)
    cases = [
        ("CT + MRI pair", [("--ct", ct), ("--mr", mr)],
         lambda: model.segment(ct=rlu2net.Image(ca, ci.affine), mr=rlu2net.Image(ma, mi.affine)),
         lambda: model.segment(ct=ct, mr=mr)),
        ("CT alone", [("--ct", ct)],
         lambda: model.segment(ct=ca, affine=ci.affine),
         lambda: model.segment(ct=ct)),
    ]
    # one warm-up of each (page cache, allocator)
    for _, inputs, arr, path in cases:
        cli(*inputs)
        arr()
    for name, inputs, arr, path in cases:
        # interleaved, so that a drift of the machine's speed falls on all three alike
        cs, ms, ps = [], [], []
        for _ in range(a.runs):
            for f, ts in ((lambda: cli(*inputs), cs), (arr, ms), (path, ps)):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
        med = statistics.median
        rows.append((name, med(cs), med(ms), med(ps), cs, ms))
    print(f"volumes: CT {ca.shape} {ca.dtype}, MRI {ma.shape} {ma.dtype}; model {a.run}; "
          f"model load in Python {load_s:.2f} s; {a.runs} runs each, interleaved, median\n")
    print("| input | `rlu2net infer` (process) | `model.segment` arrays | ratio arrays / CLI | `model.segment` paths |")
    print("|---|---|---|---|---|")
    for name, c, m, p, cs, ms in rows:
        print(f"| {name} | {c:.2f} s | {m:.2f} s | {m / c:.2f} | {p:.2f} s |")
    print()
    for name, c, m, p, cs, ms in rows:
        print(f"{name}: CLI runs {[round(x, 2) for x in cs]}, array runs {[round(x, 2) for x in ms]}")


if __name__ == "__main__":
    main()
