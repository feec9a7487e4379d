#!/usr/bin/env python3
"""Mean Dice of an `rlu2net evaluate` report grouped by what SynthWHS drew per case.

    bench/by_appearance.py EVAL_DIR SYNTH_DIR [EVAL_DIR SYNTH_DIR ...]

For each pair of folders, reads EVAL_DIR/report.json (per-case Dice) and
SYNTH_DIR/manifest.json (what the generator drew), and prints, per modality and
per drawn contrast (CT phase, MRI sequence), the number of cases, their mean Dice
over the 7 structures, the mean magnitude of the heart's drawn rotation
(|rotation_deg|, the Euclidean norm of its three angles) and each case's
`dice@degrees`. It separates what a sequence costs from what an orientation
costs when a test set mixes both. Standard library only.
"""
import collections
import json
import math
import sys


def drawn(manifest):
    """case name -> (contrast, rotation magnitude in degrees)."""
    out = {}
    for c in manifest["cases"]:
        for mod in ("ct", "mr"):
            varied = c[mod].get("appearance", {}).get("varied", {})
            rot = c.get(f"{mod}_subject", {}).get("rotation_deg", [0.0, 0.0, 0.0])
            name = f"{mod}_{c['split']}_{c['id']}"
            out[name] = (varied.get("contrast", "classic"), math.sqrt(sum(r * r for r in rot)))
    return out


def main(args):
    if not args or len(args) % 2:
        sys.exit(__doc__)
    for eval_dir, synth_dir in zip(args[::2], args[1::2]):
        info = drawn(json.load(open(f"{synth_dir}/manifest.json")))
        report = json.load(open(f"{eval_dir}/report.json"))
        groups = collections.defaultdict(list)
        for case in report["cases"]:
            if case["case"] not in info:
                sys.exit(f"{eval_dir}: case {case['case']} is not in {synth_dir}/manifest.json")
            dice = [d for d in case["dice"].values() if d is not None and math.isfinite(d)]
            contrast, rot = info[case["case"]]
            groups[(case["modality"], contrast)].append((sum(dice) / len(dice), rot))
        for (mod, contrast), g in sorted(groups.items()):
            mean = sum(d for d, _ in g) / len(g)
            rot = sum(r for _, r in g) / len(g)
            cases = " ".join(f"{d:.2f}@{r:.0f}" for d, r in g)
            print(f"{eval_dir:24s} {mod:3s} {contrast:16s} n={len(g):2d} dice={mean:.3f} |rot|={rot:4.1f}°  {cases}")


if __name__ == "__main__":
    main(sys.argv[1:])
