"""Replay automatic-stopping rules offline on recorded `dip eval` curves, and rank them.

Record the curves once (every step; ``--curves`` adds the windowed output variance and the PSNR
of the window mean for each ``--curve-windows`` W, the recipe's W included)::

    python -m dip eval --cases denoise25 --size 128 --steps 3000 --seeds 0,1,2 --device cuda \\
        --curves curves.json [--curve-windows 50,100,200]

then replay and rank::

    python benchmarks/tune_stopping.py curves.json [more.json ...] \\
        [--tune-seeds 0,1] [--test-seeds 2] [--top 20] [--patience 250,500,1000] \\
        [--tol 0,0.05,0.1,0.2,0.3] [--delays 0,50,100,...] [--sources plain,avg,wmean]

A rule is (W, P, tol, source, delay):

- detection, as ``dip.stopping.WindowedVarianceStopper`` does it: VAR_t is the recorded variance
  of the last W plain outputs; the rule fires at the first step t with t - argmin_{s<=t} VAR_s
  >= P (strict new minima; the argmin is the step of the variance minimum, ``t_min``);
- anchor: ``t_min`` when tol = 0 (ES-WMV as published); with tol > 0 the last step s <= t_stop
  with VAR_s <= (1 + tol) * VAR_min, the end of the variance floor (the variance curve is flat
  around its minimum, so where exactly its minimum falls is partly chance);
- returned image: ``source`` at step min(anchor + delay, t_stop): ``plain`` the network output,
  ``avg`` the exponentially averaged output (recipes with ``exp_weight``), ``wmeanN`` the mean
  of the last N plain outputs (``wmean`` with no N: the rule's own W, what ``return_mean`` holds);
- a run where the rule does not fire ends as the fixed run does: its result is ``fixed_psnr``
  and its steps the run's step count.

Scores per rule and seed set: runs within 0.5 dB of the run's peak (the best PSNR of the image
the recipe returns along the run, as ``dip eval`` reports it), mean PSNR, mean and worst gap to
the peak, mean stop step.  Rules are ranked on the tuning seeds (within-0.5 dB count, then mean
PSNR) and shown with their held-out scores; the rules ``dip.stopping.from_config`` implements
are always listed (marked ``*``: the current default for averaging recipes; ``paper``: ES-WMV
as published).

Replay equals what the stopper does except for ``sync_every`` (on accelerators the stop may be
reported up to 24 observed steps late; the returned image is the same).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

FORMAT = "dip-eval-curves/1"


# ---------------------------------------------------------------------------- loading


@dataclass
class Run:
    """One recorded run: every series indexed by step - 1 (steps 1..n)."""

    name: str
    seed: int
    steps_run: int
    fixed_psnr: float
    peak: float
    psnr: np.ndarray
    psnr_avg: np.ndarray
    var: dict[int, np.ndarray]
    wmean: dict[int, np.ndarray]


def _arr(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def load(paths: Iterable[str]) -> list[Run]:
    """Read curves files written by ``dip eval --curves`` (``dip.evaluate.write_curves``)."""
    runs = []
    for path in paths:
        with open(path) as fh:
            doc = json.load(fh)
        if doc.get("format") != FORMAT:
            raise ValueError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r} "
                             f"(a file from `dip eval --curves`)")
        for r in doc["runs"]:
            s = r["series"]
            steps = np.asarray(s["step"], dtype=np.int64)
            if len(steps) == 0 or not np.array_equal(steps, np.arange(1, len(steps) + 1)):
                raise ValueError(f"{path}: run {r['image']}/seed{r['seed']} was not recorded at "
                                 f"every step; record with --curve-every 1")
            if "var" not in s:
                raise ValueError(f"{path}: run {r['image']}/seed{r['seed']} has no variance "
                                 f"series; record with `dip eval --curves`")
            avg = _arr(s["psnr_avg"])
            plain = _arr(s["psnr"])
            returned = avg if r.get("exp_weight") is not None else plain
            runs.append(Run(
                name=f"{r['case']}/{r['image']}", seed=int(r["seed"]), steps_run=int(r["steps_run"]),
                fixed_psnr=float(r["fixed_psnr"]), peak=float(np.nanmax(returned)),
                psnr=plain, psnr_avg=avg,
                var={int(w): _arr(v) for w, v in s["var"].items()},
                wmean={int(w): _arr(v) for w, v in s["psnr_wmean"].items()}))
    return runs


# ----------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class Rule:
    window: int
    patience: int
    tol: float
    source: str      # "plain", "avg" or "wmean<N>"
    delay: int

    def label(self) -> str:
        anchor = "min" if self.tol == 0 else f"floor{self.tol:g}"
        return f"W={self.window:<4d}P={self.patience:<5d}{self.source}@{anchor}+{self.delay}"


def detect(var: np.ndarray, patience: int) -> tuple[int | None, int | None]:
    """(index of the stop step, index of the variance minimum at that time), or (None, None)
    when the rule does not fire.  Indices are step - 1; NaN (window not full) never improves."""
    best_i, best_v = -1, math.inf
    for i, v in enumerate(var):
        if v < best_v:
            best_v, best_i = v, i
        if best_i >= 0 and i - best_i >= patience:
            return i, best_i
    return None, None


def replay(run: Run, rule: Rule, cache: dict) -> tuple[float, int, int | None]:
    """(PSNR of the returned image, steps run, returned step or None) of ``rule`` on ``run``."""
    key = (id(run), rule.window, rule.patience)
    if key not in cache:
        cache[key] = detect(run.var[rule.window], rule.patience)
    stop_i, min_i = cache[key]
    if stop_i is None:
        return run.fixed_psnr, run.steps_run, None
    v = run.var[rule.window]
    anchor = min_i
    if rule.tol > 0:
        ok = np.nonzero(v[:stop_i + 1] <= (1.0 + rule.tol) * v[min_i])[0]
        anchor = int(ok[-1])
    ret = min(anchor + rule.delay, stop_i)
    if rule.source == "plain":
        series = run.psnr
    elif rule.source == "avg":
        series = run.psnr_avg
    else:
        series = run.wmean[int(rule.source[5:])]
    return float(series[ret]), stop_i + 1, ret + 1


@dataclass
class Score:
    n: int
    within: int
    mean_psnr: float
    mean_gap: float
    worst_gap: float
    mean_steps: float


def score(runs: Sequence[Run], rule: Rule, cache: dict) -> Score:
    res = [replay(r, rule, cache) for r in runs]
    psnr = np.array([p for p, _, _ in res])
    gaps = np.array([r.peak for r in runs]) - psnr
    return Score(len(runs), int((gaps <= 0.5).sum()), float(np.nanmean(psnr)),
                 float(np.nanmean(gaps)), float(np.nanmax(gaps)),
                 float(np.mean([s for _, s, _ in res])))


def candidate_rules(runs: Sequence[Run], patience: Sequence[int], tols: Sequence[float],
                    delays: Sequence[int], sources: Sequence[str]) -> list[Rule]:
    windows = sorted(set.intersection(*(set(r.var) for r in runs)))
    rules = []
    for w in windows:
        srcs = []
        for s in sources:
            if s == "wmean":
                srcs.append(f"wmean{w}")
            elif s.startswith("wmean"):
                srcs.extend(f"wmean{n}" for n in windows)
            elif s == "avg" and not all(np.isfinite(r.psnr_avg).any() for r in runs):
                continue
            else:
                srcs.append(s)
        for p in patience:
            for t in tols:
                for s in dict.fromkeys(srcs):
                    for d in delays:
                        if d < p:
                            rules.append(Rule(w, p, float(t), s, int(d)))
    return rules


def reference_rules(window: int, patience: int) -> dict[Rule, str]:
    """The rules ``dip.stopping.from_config`` builds (current default and the paper's)."""
    return {Rule(window, patience, 0.0, f"wmean{window}", window - 1): "*",
            Rule(window, patience, 0.0, "plain", 0): "paper"}


# -------------------------------------------------------------------------------- CLI


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _fmt(s: Score | None) -> str:
    if s is None or s.n == 0:
        return f"{'-':>38}"
    return (f"{s.within:>2d}/{s.n:<2d} {s.mean_psnr:6.2f} {s.mean_gap:5.2f} {s.worst_gap:5.2f} "
            f"{s.mean_steps:6.0f}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curves", nargs="+", help="curves files from `dip eval --curves`")
    ap.add_argument("--tune-seeds", type=_ints, default=[0, 1], help="seeds ranked on (0,1)")
    ap.add_argument("--test-seeds", type=_ints, default=[2], help="held-out seeds (2)")
    ap.add_argument("--patience", type=_ints, default=[250, 500, 750, 1000])
    ap.add_argument("--tol", type=_floats, default=[0, 0.05, 0.1, 0.2, 0.3],
                    help="variance-floor tolerances (0: the minimum itself)")
    ap.add_argument("--delays", type=_ints, default=list(range(0, 501, 50)) + [99, 199],
                    help="steps from the anchor to the returned image")
    ap.add_argument("--sources", default="plain,avg,wmean,wmeanN",
                    help="returned image: plain, avg, wmean (the rule's W), wmeanN (every W)")
    ap.add_argument("--top", type=int, default=20, help="rules to list")
    ap.add_argument("--runs", action="store_true", help="also list the top rule per run")
    args = ap.parse_args(argv)

    try:
        runs = load(args.curves)
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"tune_stopping: error: {exc}\n")
        return 2
    tune = [r for r in runs if r.seed in args.tune_seeds]
    test = [r for r in runs if r.seed in args.test_seeds]
    if not tune:
        sys.stderr.write(f"tune_stopping: error: no run has a seed in --tune-seeds "
                         f"{args.tune_seeds} (seeds: {sorted({r.seed for r in runs})})\n")
        return 2
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    rules = candidate_rules(runs, args.patience, args.tol, args.delays, sources)
    refs = {}
    for w in sorted(set.intersection(*(set(r.var) for r in runs))):
        for p in args.patience:
            refs.update(reference_rules(w, p))
    cache: dict = {}
    scored = [(rule, score(tune, rule, cache)) for rule in set(rules) | set(refs)]
    scored.sort(key=lambda rs: (-rs[1].within, -rs[1].mean_psnr, rs[1].mean_steps))
    fixed = (np.mean([r.fixed_psnr for r in tune]), np.mean([r.fixed_psnr for r in test]) if test else math.nan)
    peak = (np.mean([r.peak for r in tune]), np.mean([r.peak for r in test]) if test else math.nan)
    print(f"{len(runs)} runs ({len(tune)} tuning: seeds {args.tune_seeds}; {len(test)} held out: "
          f"seeds {args.test_seeds}); {len(scored)} rules")
    print(f"mean fixed-steps PSNR {fixed[0]:.2f} / {fixed[1]:.2f} dB, mean peak {peak[0]:.2f} / "
          f"{peak[1]:.2f} dB (tuning / held out)")
    head = f"{'rule':<40}  {'tuning: <=0.5dB psnr gap worst steps':<38}  held out"
    print(head)
    print("-" * (len(head) + 30))
    shown = scored[:args.top] + [rs for rs in scored[args.top:] if rs[0] in refs]
    for rule, s in shown:
        mark = refs.get(rule, "")
        print(f"{rule.label():<34}{mark:>6}  {_fmt(s)}  {_fmt(score(test, rule, cache) if test else None)}")
    if args.runs and scored:
        best = scored[0][0]
        print(f"\nper run, {best.label()}:")
        for r in runs:
            p, steps, ret = replay(r, best, cache)
            print(f"  {r.name:<32} seed {r.seed}  {p:6.2f} dB  peak {r.peak:6.2f}  "
                  f"stop {steps:>5}  returned {ret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
