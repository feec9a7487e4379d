"""The PPO agents' reward signal, recovered from a run's metrics.jsonl: every module's
reward for a rotation is (1 − L_Dice of the step) + S(rotation), with one score table S
per step shared by all modules, so S of each sampled rotation is reward − (1 − L_Dice).
Prints, for each half of the run, the mean S of the most-scored rotations, how often
rotation WANT (R_poseᵀ) outscored two others when both were sampled, and what each
module sampled most.

    python3 bench/probe_scores.py RUN/metrics.jsonl [WANT=19] [OTHERS=23,0]
"""
import collections
import json
import sys
lines = [json.loads(l) for l in open(sys.argv[1])]
want = int(sys.argv[2]) if len(sys.argv) > 2 else 19
others = [int(x) for x in sys.argv[3].split(",")] if len(sys.argv) > 3 else [23, 0]
steps = [l for l in lines if l.get("kind") == "step" and l.get("reward")]
print("steps with rewards:", len(steps), "of", sum(1 for l in lines if l.get("kind") == "step"))
def table(st):
    base = 1 - (st["dice_ct"] + st["dice_mr"]) / 2
    s = {}
    for acts, rs in zip(st["actions"], st["reward"]):
        for a, r in zip(acts, rs):
            s[a] = r - base
    return s
half = len(steps) // 2
for name, sel in (("first half", steps[:half]), ("second half", steps[half:])):
    sums, counts = collections.defaultdict(float), collections.Counter()
    wins = collections.Counter(); both = collections.Counter()
    for st in sel:
        s = table(st)
        for a, v in s.items():
            sums[a] += v; counts[a] += 1
        for other in others:
            if want in s and other in s:
                both[other] += 1
                wins[other] += s[want] > s[other]
    ranked = sorted(((sums[a] / counts[a], a, counts[a]) for a in counts), reverse=True)[:6]
    print(name, "mean S(a) of sampled rotations, top 6:", [(a, round(m, 4), n) for m, a, n in ranked])
    for other in others:
        if both[other]:
            print(f"  S({want}) > S({other}) in {wins[other]}/{both[other]} steps where both were sampled")
    # what each module sampled
    per = [collections.Counter() for _ in range(4)]
    for st in sel:
        for m, acts in enumerate(st["actions"]):
            per[m].update(acts)
    print("  most sampled per module:", [c.most_common(3) for c in per])
