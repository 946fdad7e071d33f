"""Is a difference between frameworks real? Means with 95% intervals over seeds, and paired
differences between two frameworks, by Student's t (SciPy).

Each seed is one shared start: the same initial weights, batch order and dropout seeds for
every framework (common.compare). So two frameworks' results are compared seed by seed, as
paired differences (a paired t interval), which removes what the seed does to both; with the
few seeds a comparison can afford (3 to 10), the t distribution with n - 1 degrees of
freedom, not the normal, gives the interval its width. No framework is imported here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

CONFIDENCE = 0.95
# key in a report row: (what it is, True where higher is better, format)
METRICS = {
    "test_acc": ("final test accuracy", True, "{:.4f}"),
    "loss": ("final training loss", False, "{:.4f}"),
    "examples_per_sec": ("examples/s", True, "{:.1f}"),
}
SAME = "no difference beyond seed-to-seed spread"


@dataclasses.dataclass(frozen=True)
class Interval:
    """The mean of n values and its t interval (low, high); NaN bounds with fewer than 2 values.
    p: the two-sided p-value that the true mean is 0 (for differences), NaN where undefined."""

    mean: float
    low: float
    high: float
    n: int
    sd: float
    p: float = math.nan

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(self).items()}


def interval(values, confidence: float = CONFIDENCE) -> Interval:
    """mean +- t(1 - (1 - confidence) / 2, n - 1) * sd / sqrt(n), sd with n - 1 in its denominator
    (scipy.stats.ttest_1samp's confidence_interval); p tests a mean of 0."""
    from scipy import stats  # imported here: only the multi-seed report needs it

    x = np.asarray(list(values), dtype=np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("interval of no values")
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, math.nan)
    sd = float(x.std(ddof=1))
    if sd == 0:  # every value the same: SciPy would divide by zero; the interval is the point
        return Interval(mean, mean, mean, n, 0.0, 1.0 if mean == 0 else 0.0)
    result = stats.ttest_1samp(x, 0.0)
    ci = result.confidence_interval(confidence)
    return Interval(mean, float(ci.low), float(ci.high), n, sd, float(result.pvalue))


def paired(a: dict, b: dict, confidence: float = CONFIDENCE) -> tuple[Interval, dict]:
    """The difference a - b over the seeds both have ({seed: value} each), paired by seed: the
    interval of the mean difference (the paired t interval, as scipy.stats.ttest_rel gives),
    and the differences by seed."""
    seeds = [s for s in a if s in b]
    if not seeds:
        raise ValueError("no seed in common")
    d = {s: a[s] - b[s] for s in seeds}
    return interval(d.values(), confidence), d


def sentence(name_a: str, name_b: str, d: Interval, metric: str) -> str:
    """One plain sentence for the difference d = a - b of a metric: which framework is ahead
    (higher accuracy or examples/s, lower loss), by how much, with the interval; or that the
    interval holds 0."""
    _, higher, fmt = METRICS[metric]
    if d.n < 2:
        return f"one seed only: no interval, so no verdict ({name_a} - {name_b} = {fmt.format(d.mean)})"
    if d.low <= 0 <= d.high:
        return SAME
    gain, lo, hi = (d.mean, d.low, d.high) if higher else (-d.mean, -d.high, -d.low)  # a's advantage
    ahead, behind = (name_a, name_b) if gain > 0 else (name_b, name_a)
    if gain < 0:
        gain, lo, hi = -gain, -hi, -lo
    return f"{ahead} is ahead of {behind} by {fmt.format(gain)} (interval {fmt.format(lo)} to {fmt.format(hi)})"


def summarize(results: dict, frameworks: list[str], confidence: float = CONFIDENCE) -> dict:
    """results: {seed: {framework: {metric: value}}} (a framework that did not finish a seed is
    absent from it). Returns {"frameworks": {framework: {metric: interval + "values" by seed}},
    "pairs": [{"a", "b", "metric", interval of a - b, "differences" by seed, "sentence"}]}."""
    values = {
        f: {m: {s: r[f][m] for s, r in results.items() if r.get(f, {}).get(m) is not None} for m in METRICS}
        for f in frameworks
    }
    out = {"confidence": confidence, "frameworks": {}, "pairs": []}
    for f in frameworks:
        out["frameworks"][f] = {
            m: {**interval(v.values(), confidence).as_dict(), "values": v} if v else None for m, v in values[f].items()
        }
    for i, a in enumerate(frameworks):
        for b in frameworks[i + 1 :]:
            for m in METRICS:
                if not any(s in values[b][m] for s in values[a][m]):
                    continue
                d, by_seed = paired(values[a][m], values[b][m], confidence)
                out["pairs"].append(
                    {
                        "a": a,
                        "b": b,
                        "metric": m,
                        **d.as_dict(),
                        "differences": by_seed,
                        "sentence": sentence(a, b, d, m),
                    }
                )
    return out
