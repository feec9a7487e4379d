#!/usr/bin/env python3
"""How much heart the training patches hold: a re-enactment, in numpy, of the sampler's
patch placement (src/data/sampler.rs `patch_start`, src/data/pairing.rs
`partner_start`) on an MM-WHS-layout folder's training labels.

Labels are reoriented to RAS and resampled to the working spacing by nearest neighbour
(the preprocessing's label path). Each draw picks a training pair, places the CT patch
(one time in three centred on a voxel of a random present class, otherwise uniform),
puts the MRI patch at the same normalised position, and also draws an MRI patch with
the MRI's own placement. Prints each kind's mean labelled fraction and how many patches
hold any heart and more than 5 %.

    python bench/patch_coverage.py DATA [--spacing 4] [--patch 32] [--draws 3000]

Needs numpy, scipy and nibabel. Rotation is left out (it turns a patch about its centre).
"""
import argparse
import glob

import nibabel as nib
import numpy as np
import scipy.ndimage as ndi


def load(path, spacing):
    img = nib.as_closest_canonical(nib.load(path))
    a = np.asarray(img.dataobj)
    values = np.unique(a)
    a = np.searchsorted(values, a).astype(np.uint8)  # MM-WHS values → 0..7
    return ndi.zoom(a, [z / spacing for z in img.header.get_zooms()[:3]], order=0)


def patch_start(lab, p, fg, rng):
    if rng.random() < fg:
        present = [c for c in range(1, 8) if (lab == c).any()]
        idx = np.argwhere(lab == rng.choice(present))
        return idx[rng.integers(len(idx))] - p // 2
    return np.array([rng.integers(0, n - p + 1) if n >= p else -((p - n) // 2)
                     for n in lab.shape])


def partner_start(start, p, size, other):
    half = p / 2
    s = round((start + half) / size * other - half)
    if other >= p:
        return int(np.clip(s, min(start, 0), (other - p) + max(start + p - size, 0)))
    return -((p - other) // 2)


def cut(lab, start, p):
    padded = np.pad(lab, p)
    a, b, c = start + p
    return padded[a:a + p, b:b + p, c:c + p]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--draws", type=int, default=3000)
    args = ap.parse_args()
    p, rng = args.patch, np.random.default_rng(0)
    ct = [load(f, args.spacing) for f in sorted(glob.glob(f"{args.data}/ct_train/*_label.nii.gz"))]
    mr = [load(f, args.spacing) for f in sorted(glob.glob(f"{args.data}/mr_train/*_label.nii.gz"))]
    print("working grids, first pair:", ct[0].shape, mr[0].shape)
    fractions = {"CT": [], "MRI at the CT's position": [], "MRI on its own": []}
    for _ in range(args.draws):
        i = rng.integers(min(len(ct), len(mr)))
        c, m = ct[i], mr[i]
        cs = patch_start(c, p, 1 / 3, rng)
        ms = np.array([partner_start(cs[a], p, c.shape[a], m.shape[a]) for a in range(3)])
        fractions["CT"].append((cut(c, cs, p) > 0).mean())
        fractions["MRI at the CT's position"].append((cut(m, ms, p) > 0).mean())
        fractions["MRI on its own"].append((cut(m, patch_start(m, p, 1 / 3, rng), p) > 0).mean())
    for name, v in fractions.items():
        v = np.array(v)
        print(f"{name:26s} labelled fraction {v.mean():.3f}, with heart {np.mean(v > 0):.2f}, "
              f"more than 5 % {np.mean(v > 0.05):.2f}")


main()
