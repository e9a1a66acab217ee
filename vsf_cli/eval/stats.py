"""Summary statistics: rates with bootstrap 95% CIs, exact sign / McNemar tests, paired deltas against a baseline."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np

# Summary name -> result-row field: the paper's pos (Q1 yes), neg (Q2 yes: the negative is absent), both, quality.
METRICS = {"positive": "answer_1", "negative": "answer_2", "both": "both", "quality": "quality"}
N_BOOT = 2000
SEED = 0  # a fixed seed, so the same answers always give the same intervals


def bootstrap_ci(values, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return (float(lo), float(hi))


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial test of wins vs losses under p = 1/2 (ties already dropped).

    With wins/losses = the discordant pairs b and c, this is the exact McNemar test.
    """
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(wins, losses) + 1))
    return float(min(Fraction(1), 2 * Fraction(tail, 2**n)))


def estimate(values) -> dict:
    """Mean with its bootstrap CI and count; None values (not judged) are left out."""
    x = [float(v) for v in values if v is not None]
    lo, hi = bootstrap_ci(x)
    return {"mean": float(np.mean(x)) if x else None, "lo": lo if x else None, "hi": hi if x else None, "n": len(x)}


def summarise(rows: list[dict]) -> dict:
    """Every metric of a group of judged rows (rows with an error are left out)."""
    ok = [r for r in rows if r.get("error") is None]
    return {"n": len(ok), "errors": len(rows) - len(ok), **{m: estimate(r.get(f) for r in ok) for m, f in METRICS.items()}}


def paired(setting_rows: list[dict], baseline_rows: list[dict], key) -> dict:
    """Per metric, the mean paired difference (setting - baseline; `mean`) with its bootstrap CI and an exact sign test.

    Rows are paired by key(row); pairs where either side is missing or has an error are dropped. For the yes/no
    metrics the sign test over the discordant pairs (b = setting yes & baseline no, c = the reverse) is McNemar's.
    """
    base = {key(r): r for r in baseline_rows if r.get("error") is None}
    pairs = [(r, base[key(r)]) for r in setting_rows if r.get("error") is None and key(r) in base]
    out = {"pairs": len(pairs)}
    for metric, f in METRICS.items():
        diffs = [float(a[f]) - float(b[f]) for a, b in pairs if a.get(f) is not None and b.get(f) is not None]
        wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        out[metric] = {**estimate(diffs), "wins": wins, "losses": losses, "p": sign_test(wins, losses)}
    return out
