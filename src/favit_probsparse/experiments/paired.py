"""Paired comparison of grid rows against a baseline row, and learning curves from the runs' CSV logs.

Rows of a grid that share a seed see the same data order and augmentation (the data modules draw them from
(seed, epoch) only), so the fair comparison of row A with the baseline B is per seed: ``d_s = A_s − B_s`` over the
seeds both finished. :func:`paired_differences` gives the mean difference, its 95 % Student-t interval, the two-sided
paired t-test p-value and the win/tie/loss count. With 5 pairs the interval is mean ± 2.78 · sd / √5: a difference
is only called "distinguishable" when the interval excludes 0.

:func:`learning_curves` reads the per-epoch metrics each run's Lightning ``CSVLogger`` wrote
(``<run>/csv/version_*/metrics.csv``) so a report can show whether training had flattened.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

__all__ = ["learning_curves", "paired_differences", "paired_table", "t_interval"]


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, low, high, p)``: Student-t interval of the mean of ``diffs`` and the two-sided p-value of
    ``mean == 0``. Fewer than two values give an unbounded interval (nan) and p = nan."""
    from scipy import stats

    n = len(diffs)
    if n == 0:
        raise ValueError("t_interval of no values")
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    if se == 0.0:  # every pair differs by the same amount: no spread, so no t-test (nan), interval a point
        return mean, mean, mean, math.nan
    q = float(stats.t.ppf(0.5 + level / 2, n - 1))
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return mean, mean - q * se, mean + q * se, p


def paired_differences(
    values: dict[str, dict[int, float]], baseline: str, mode: str = "max"
) -> list[dict[str, Any]]:
    """Per row (except the baseline): differences to the baseline over the seeds both have.

    Args:
        values: row name -> {seed: metric value} (finished runs only).
        baseline: the row every other row is compared with.
        mode: ``max`` (higher is better) or ``min``: decides what a "win" is.

    Returns one dict per row in ``values`` order: ``row, n, seeds, diffs, mean, low, high, p, wins, ties, losses,
    verdict``.
    """
    if baseline not in values:
        raise ValueError(f"baseline row {baseline!r} has no finished runs")
    base = values[baseline]
    out = []
    for row, vals in values.items():
        if row == baseline:
            continue
        seeds = sorted(set(vals) & set(base))
        entry: dict[str, Any] = {"row": row, "n": len(seeds), "seeds": seeds}
        if not seeds:
            entry["verdict"] = "no common seeds"
            out.append(entry)
            continue
        diffs = [vals[s] - base[s] for s in seeds]
        mean, low, high, p = t_interval(diffs)
        sign = 1 if mode == "max" else -1
        wins = sum(sign * d > 0 for d in diffs)
        ties = sum(d == 0 for d in diffs)
        if math.isnan(low):
            verdict = "one pair: no interval"
        elif math.isnan(p):
            verdict = "equal differences: no test"
        elif low > 0 or high < 0:
            verdict = "better" if sign * mean > 0 else "worse"
        else:
            verdict = "not distinguishable"
        entry.update(
            diffs=diffs,
            mean=mean,
            low=low,
            high=high,
            p=p,
            wins=wins,
            ties=ties,
            losses=len(diffs) - wins - ties,
        )
        entry["verdict"] = verdict
        out.append(entry)
    return out


def paired_table(
    pairs: list[dict[str, Any]], labels: dict[str, str], baseline_label: str, digits: int
) -> str:
    """Markdown table of :func:`paired_differences`."""
    d = digits
    lines = [
        f"| Row | pairs (seeds) | mean difference to {baseline_label} | 95 % interval | paired t-test p | "
        "wins / ties / losses | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in pairs:
        label = labels.get(e["row"], e["row"])
        if "mean" not in e:
            lines.append(f"| {label} | 0 | – | – | – | – | {e['verdict']} |")
            continue
        ci = "–" if math.isnan(e["low"]) else f"[{e['low']:+.{d}f}, {e['high']:+.{d}f}]"
        p = "–" if math.isnan(e["p"]) else f"{e['p']:.3f}"
        seeds = ", ".join(map(str, e["seeds"]))
        lines.append(
            f"| {label} | {e['n']} ({seeds}) | {e['mean']:+.{d}f} | {ci} | {p} | "
            f"{e['wins']} / {e['ties']} / {e['losses']} | {e['verdict']} |"
        )
    return "\n".join(lines)


def learning_curves(run_dir: Path, metric: str) -> dict[int, float]:
    """``{epoch: value}`` of ``metric`` in the run's CSVLogger file(s) (the last value logged in each epoch).

    Rows of Lightning's ``metrics.csv`` hold the metrics logged at one step; a metric absent from a row is empty.
    Several ``version_*`` folders (a resumed run) are read in order, so later values win.
    """
    out: dict[int, float] = {}
    for path in sorted(Path(run_dir).glob("csv/*/metrics.csv")):
        with open(path, newline="") as fh:
            for rec in csv.DictReader(fh):
                v, ep = rec.get(metric), rec.get("epoch")
                if v in (None, "") or ep in (None, ""):
                    continue
                out[int(float(ep))] = float(v)
    return dict(sorted(out.items()))
