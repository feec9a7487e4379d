#!/usr/bin/env python3
"""Per-operation profile of an rlu2net run, from `perf record --call-graph dwarf`.

    perf record -F 200 --call-graph dwarf,60000 -o perf.data \
        target/release/rlu2net bench model --preset cpu --patch 64 --runs 2
    perf script -i perf.data | bench/op_profile.py

Each sample is charged to the operation it ran in: the outermost frame of the CPU
backend's operations (`burn_flex::ops::<module>::<function>`), or of this project's
own kernels (`rlu2net::model::norm_act`), found on the sample's call stack. Work
that the backend hands to its worker threads keeps the operation's name (the
worker's stack starts in the operation's closure), but not the forward/backward
context, so the table is by operation, not by pass. Samples in no operation are
listed by their innermost function (allocation, autodiff bookkeeping, ...).
"""
import collections
import re
import sys

FLEX = re.compile(r"burn_flex::ops::(\w+)::(?:.*>::)?(\w+)")
OWN = re.compile(r"rlu2net::model::norm_act::(\w+)")


def op_of(frames):
    """frames: innermost first. -> operation name."""
    name = None
    for f in frames:  # keep the outermost match
        m = OWN.search(f)
        if m:
            name = "norm_act::" + m.group(1)
            continue
        m = FLEX.search(f)
        if m:
            name = m.group(1) + "::" + m.group(2)
    if name:
        return name
    syms = [clean(f) for f in frames]
    for s in syms:  # a backend helper or the GEMM on a worker thread
        for key in ("burn_flex::", "gemm_", "rayon"):
            if s.startswith(key) or ("<" + key) in s:
                return "(worker) " + short(s)
    return "(outside ops) " + short(syms[0] if syms else "?")


def clean(frame):
    f = re.sub(r"^[0-9a-f]+\s+", "", frame)
    f = re.sub(r"\s+\(.*\)$", "", f)
    return re.sub(r"\+0x[0-9a-f]+$", "", f)


def short(sym):
    sym = re.sub(r"<impl [^>]*>", "<impl>", sym)
    return sym[:70]


def samples(lines):
    frames = []
    for line in lines:
        if not line.strip():
            if frames:
                yield frames
            frames = []
        elif line.startswith((" ", "\t")):
            frames.append(line.strip())
    if frames:
        yield frames


def main():
    counts = collections.Counter(op_of(f) for f in samples(sys.stdin))
    total = sum(counts.values()) or 1
    print(f"{'share':>6}  operation  ({total} samples)")
    shown = 0.0
    for name, n in counts.most_common(40):
        print(f"{100 * n / total:5.1f}%  {name}")
        shown += n
    print(f"{100 * (total - shown) / total:5.1f}%  (the rest)")


if __name__ == "__main__":
    main()
