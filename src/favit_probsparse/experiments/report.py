"""The report of a grid: per-row mean ± std (:func:`summarize`), the Markdown table with its provenance, the raw
JSON and a chart (:func:`write_report`); all written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from favit_probsparse.experiments.grid import Grid, Metric
from favit_probsparse.experiments.paired import learning_curves, paired_differences, paired_table
from favit_probsparse.experiments.records import summarize_values
from favit_probsparse.experiments.runner import RunResult
from favit_probsparse.utils.io import save_figure, write_json, write_text
from favit_probsparse.utils.provenance import git_commit, hardware_summary, status_line, utc_now

__all__ = ["fmt_mean_std", "summarize", "write_report"]


def fmt_mean_std(mean: float, std: float, digits: int, n: int) -> str:
    """``mean ± std`` with ``digits`` decimals; the mean alone when n = 1 (no spread measured)."""
    if n > 1 and not math.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def summarize(grid: Grid, results: list[RunResult]) -> list[dict[str, Any]]:
    """Per-row aggregate: values, mean, std of the main and extra metrics, stats, failures."""
    out = []
    for row in grid.rows:
        rs = [r for r in results if r.row == row.name]
        if not rs:
            continue
        done = [r for r in rs if r.status == "done"]
        entry: dict[str, Any] = {
            "row": row.name,
            "label": row.label,
            "reference": row.reference,
            "seeds_done": [r.seed for r in done],
            "failed": [(r.seed, r.error) for r in rs if r.status == "failed"],
            "missing": [(r.seed, r.status) for r in rs if r.status not in ("done", "failed")],
            "metrics": {},
            "stats": {},
            "wall_s": None,
        }
        for m in [grid.metric, *grid.extra_metrics]:
            vals = [r.metrics[m.name] * m.scale for r in done if r.metrics.get(m.name) is not None]
            if vals:
                entry["metrics"][m.name] = summarize_values(vals)
        for r in done:
            for k, v in (r.stats or {}).items():
                if isinstance(v, int | float) and v is not None:
                    entry["stats"].setdefault(k, v)
        walls = [r.wall_s for r in done if r.wall_s]
        entry["wall_s"] = sum(walls) / len(walls) if walls else None
        out.append(entry)
    return out


def _spread_sentence(summary: list[dict], m: Metric) -> str | None:
    """Compare the lead of the best row with the seed-to-seed spread (so a table of noise is not read as a ranking)."""
    ranked = sorted(
        (e["metrics"][m.name] for e in summary if m.name in e["metrics"]),
        key=lambda x: x["mean"],
        reverse=m.mode == "max",
    )
    stds = sorted(x["std"] for x in ranked if x["n"] > 1 and not math.isnan(x["std"]))
    if len(ranked) < 2 or not stds:
        return None
    med = stds[len(stds) // 2]
    lead = abs(ranked[0]["mean"] - ranked[1]["mean"])
    span = abs(ranked[0]["mean"] - ranked[-1]["mean"])
    d = m.digits
    verdict = (
        "so the ranking is within seed noise"
        if span <= 2 * med
        else ("so the top rows are not separated" if lead <= med else "")
    )
    return (
        f"Seed-to-seed spread (median std over rows): {med:.{d}f}; best minus second: {lead:.{d}f}; "
        f"best minus worst: {span:.{d}f}" + (f", {verdict}." if verdict else ".")
    )


def stat_cell(v: Any, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _table(grid: Grid, summary: list[dict], runs_label: str) -> tuple[str, str | None, list[str]]:
    m = grid.metric
    has_ref = any(r.reference is not None for r in grid.rows)
    stat_keys = [k for k in ("params_m", "gmacs") if any(k in e["stats"] for e in summary)]
    stat_titles = {"params_m": "Params (M)", "gmacs": "GMACs"}
    header = ["Row", f"{m.title} (mean ± std)", "n", "per seed"]
    if has_ref:
        header.append(grid.reference_label)
    header += [e.title for e in grid.extra_metrics] + [stat_titles[k] for k in stat_keys] + ["wall / run (s)"]
    best = None
    means = [(e["metrics"][m.name]["mean"], e["row"]) for e in summary if m.name in e["metrics"]]
    if len(means) > 1:
        best = (max if m.mode == "max" else min)(means)[1]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    footnotes = []
    for e in summary:
        mm = e["metrics"].get(m.name)
        if mm:
            cell = fmt_mean_std(mm["mean"], mm["std"], m.digits, mm["n"])
            if e["row"] == best:
                cell = f"**{cell}**"
            per_seed = ", ".join(f"{v:.{m.digits}f}" for v in mm["values"])
        else:
            cell, per_seed = "–", ""
        if e["failed"]:
            cell += " FAILED (seed " + ", ".join(str(s) for s, _ in e["failed"]) + ")"
            for s, err in e["failed"]:
                footnotes.append(
                    f"- **{e['label']}**, seed {s}: FAILED: `{err}` (see `{runs_label}/{e['row']}/"
                    f"seed{s}/log.txt`)"
                )
        if e["missing"]:
            cell += " (" + "; ".join(f"seed {s}: {st}" for s, st in e["missing"]) + ")"
        cells = [e["label"], cell, str(mm["n"] if mm else 0), per_seed]
        if has_ref:
            ref = e["reference"]
            cells.append("–" if ref is None else str(ref))
        for x in grid.extra_metrics:
            xm = e["metrics"].get(x.name)
            cells.append(fmt_mean_std(xm["mean"], xm["std"], x.digits, xm["n"]) if xm else "–")
        for k in stat_keys:
            cells.append(stat_cell(e["stats"].get(k), 2 if k == "params_m" else 3))
        cells.append(stat_cell(e["wall_s"], 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), best, footnotes


def _how_made(grid, results, seeds, command, command_note, hardware, now, commit, runs_label) -> list[str]:
    """The report's provenance section: command, grid, seeds and outcomes, hardware, wall time, date, commit."""
    m = grid.metric
    n_done = sum(r.status == "done" for r in results)
    n_failed = sum(r.status == "failed" for r in results)
    total_wall = sum(r.wall_s or 0 for r in results if r.status in ("done", "failed"))
    fin = sorted(r.finished for r in results if r.finished)
    grid_src = f"`{grid.path}`; base config: " if grid.path else "base config: "
    return [
        "## How these numbers were made",
        "",
        f"- Command: `{command}`" + (f" ({command_note})" if command_note else ""),
        f"- Grid: {grid_src}`{grid.base_config}`"
        + (f" with `{' '.join(grid.cli_args)}`" if grid.cli_args else "")
        + f"; metric: `{m.name}` ({'test set' if grid.test else 'last logged'}, "
        f"{grid.test_ckpt} weights when tested)",
        f"- Seeds: {', '.join(map(str, seeds))}; runs finished: {n_done}, failed: {n_failed}, "
        f"of {len(results)}",
        f"- Hardware: {hardware}",
        f"- Wall time of the runs: {total_wall / 60:.1f} min in total"
        + (f"; runs finished between {min(fin)} and {max(fin)}" if fin else ""),
        f"- Written: {now}" + (f"; git commit {commit}" if commit else ""),
        f"- Per-run configs, logs and result records: `{runs_label}/<row>/seed<k>/` (not committed)",
    ]


def write_report(
    grid: Grid,
    results: list[RunResult],
    out_dir: Path,
    command: str,
    seeds: list[int],
    hardware: str | None = None,
    chart: bool = True,
    command_note: str | None = None,
    runs_label: str | None = None,
    runs_dir: Path | None = None,
) -> tuple[Path, str]:
    """Write ``<out>/<name>.md`` (+ ``.json``, ``.png``); returns the markdown path and the table text.

    ``runs_label``: how the report names the folder of the runs (default ``runs/<grid name>``).
    ``runs_dir``: the folder holding ``<row>/seed<k>/`` (needed for the grid's ``curves``).
    """
    out_dir = Path(out_dir)
    runs_label = runs_label or f"runs/{grid.name}"
    summary = summarize(grid, results)
    hardware = hardware or hardware_summary()
    m = grid.metric
    table, best, footnotes = _table(grid, summary, runs_label)
    now = utc_now()
    commit = git_commit()
    fin = sorted(r.finished for r in results if r.finished)
    when = f"{min(fin)[:16]} to {max(fin)[:16]} UTC" if fin else now[:16] + " UTC"
    md = [
        f"# {grid.title or grid.name}",
        "",
        status_line(f"{m.title} per row over seeds {seeds}", when, hardware, command),
        "",
    ]
    if grid.description:
        md += [grid.description.strip(), ""]
    md += [table, ""]
    if best:
        md.append(
            f"Bold: best mean {m.title} ({'higher' if m.mode == 'max' else 'lower'} is better). "
            f"± is the sample standard deviation over seeds (a single seed shows its value alone)."
        )
        spread = _spread_sentence(summary, m)
        if spread:
            md += ["", spread]
    if footnotes:
        md += ["", "Failed runs:", *footnotes]
    pairs = _paired_section(grid, results, summary) if grid.baseline else None
    if pairs:
        md += ["", *pairs[0]]
    curves = _curves(grid, results, Path(runs_dir)) if grid.curves and runs_dir is not None else None
    if curves:
        md += ["", *_curves_section(grid, curves)]
        if chart:
            _curves_chart(grid, curves, out_dir / f"{grid.name}-curves.png")
    if grid.reference_note:
        md += ["", grid.reference_note.strip()]
    md += ["", *_how_made(grid, results, seeds, command, command_note, hardware, now, commit, runs_label)]
    md_path = write_text(out_dir / f"{grid.name}.md", "\n".join(md) + "\n")
    raw = {
        "grid": grid.name,
        "command": command,
        "seeds": seeds,
        "hardware": hardware,
        "written": now,
        "git_commit": commit,
        "metric": m.name,
        "summary": summary,
        "paired": pairs[1] if pairs else None,
        "curves": curves,
        "runs": [
            {k: getattr(r, k) for k in ("row", "seed", "status", "metrics", "stats", "wall_s", "error")}
            for r in results
        ],
    }
    write_json(out_dir / f"{grid.name}.json", raw)
    if chart:
        _chart(grid, summary, out_dir / f"{grid.name}.png")
    return md_path, table


def _paired_section(
    grid: Grid, results: list[RunResult], summary: list[dict]
) -> tuple[list[str], list] | None:
    m = grid.metric
    values: dict[str, dict[int, float]] = {}
    for row in grid.rows:
        vals = {
            r.seed: r.metrics[m.name] * m.scale
            for r in results
            if r.row == row.name and r.status == "done" and r.metrics.get(m.name) is not None
        }
        if vals:
            values[row.name] = vals
    if grid.baseline not in values or len(values) < 2:
        return None
    labels = {e["row"]: e["label"] for e in summary}
    pairs = paired_differences(values, grid.baseline, m.mode)
    base_label = labels.get(grid.baseline, grid.baseline)
    apart = [labels.get(e["row"], e["row"]) for e in pairs if e["verdict"] in ("better", "worse")]
    lines = [
        f"### Paired differences to {base_label}",
        "",
        f"Each row minus {base_label} on the same seed (same data order and augmentation), in {m.title}; "
        "95 % Student-t interval of the mean difference and the two-sided paired t-test. "
        '"Distinguishable" means the interval excludes 0; no correction for the number of rows is made.',
        "",
        paired_table(pairs, labels, base_label, m.digits),
        "",
        (
            "Distinguishable from " + base_label + " at this scale: " + ", ".join(apart) + "."
            if apart
            else f"No row is distinguishable from {base_label} at this scale."
        ),
    ]
    return lines, pairs


def _curves(grid: Grid, results: list[RunResult], runs_dir: Path) -> dict[str, dict[str, dict]]:
    """metric -> row -> {epoch: summary over seeds} from the finished runs' CSV logs."""
    out: dict[str, dict[str, dict]] = {}
    for c in grid.curves:
        per_row: dict[str, dict] = {}
        for row in grid.rows:
            by_epoch: dict[int, list[float]] = {}
            for r in results:
                if r.row != row.name or r.status != "done":
                    continue
                for ep, v in learning_curves(runs_dir / row.name / f"seed{r.seed}", c.name).items():
                    by_epoch.setdefault(ep, []).append(v * c.scale)
            if by_epoch:
                per_row[row.name] = {ep: summarize_values(v) for ep, v in sorted(by_epoch.items())}
        if per_row:
            out[c.name] = per_row
    return out


def _curves_section(grid: Grid, curves: dict[str, dict[str, dict]]) -> list[str]:
    labels = {r.name: r.label for r in grid.rows}
    lines = []
    for c in grid.curves:
        per_row = curves.get(c.name)
        if not per_row:
            continue
        epochs = sorted({ep for v in per_row.values() for ep in v})
        d = c.digits
        lines += [
            f"### {c.title} per epoch (mean over seeds)",
            "",
            "| Row | " + " | ".join(f"epoch {ep}" for ep in epochs) + " | last − previous |",
            "|---|" + "---|" * (len(epochs) + 1),
        ]
        for row, v in per_row.items():
            cells = [f"{v[ep]['mean']:.{d}f}" if ep in v else "–" for ep in epochs]
            last = [v[ep]["mean"] for ep in epochs if ep in v][-2:]
            gain = f"{last[1] - last[0]:+.{d}f}" if len(last) == 2 else "–"
            lines.append(f"| {labels.get(row, row)} | " + " | ".join(cells) + f" | {gain} |")
        lines.append("")
    return lines


def _curves_chart(grid: Grid, curves: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in grid.curves if curves.get(c.name)]
    labels = {r.name: r.label for r in grid.rows}
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 4.0), squeeze=False)
    for ax, c in zip(axes[0], shown):
        for row, v in curves[c.name].items():
            eps = sorted(v)
            mu = [v[e]["mean"] for e in eps]
            sd = [0.0 if math.isnan(v[e]["std"]) else v[e]["std"] for e in eps]
            (line,) = ax.plot(eps, mu, marker="o", ms=3, label=labels.get(row, row))
            ax.fill_between(
                eps,
                [a - b for a, b in zip(mu, sd)],
                [a + b for a, b in zip(mu, sd)],
                alpha=0.12,
                color=line.get_color(),
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(c.title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{grid.title or grid.name}: mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    _save_fig(fig, path)


def _save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def _chart(grid: Grid, summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = grid.metric
    labels = [e["label"] for e in summary]
    means = [e["metrics"].get(m.name, {}).get("mean", float("nan")) for e in summary]
    stds = [e["metrics"].get(m.name, {}).get("std", 0.0) for e in summary]
    stds = [0.0 if (s is None or math.isnan(s)) else s for s in stds]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 4.2))
    xs = list(range(len(labels)))
    # points with error bars, not bars: the y axis is zoomed to the data, and bars would exaggerate gaps
    ok = [(x, mu, sd) for x, mu, sd in zip(xs, means, stds) if not math.isnan(mu)]
    if ok:
        ax.errorbar(
            [o[0] for o in ok],
            [o[1] for o in ok],
            yerr=[o[2] for o in ok],
            fmt="o",
            ms=7,
            capsize=5,
            color="tab:blue",
            label="ours: mean ± std over seeds",
        )
    for e, x in zip(summary, xs):
        vals = e["metrics"].get(m.name, {}).get("values", [])
        for v in vals:
            ax.plot(
                x + 0.15,
                v,
                ".",
                color="0.35",
                ms=5,
                label="ours: one seed" if x == xs[0] and v == vals[0] else None,
            )
        if e["failed"] and not e["metrics"]:
            ax.text(x, 0, "FAILED", ha="center", va="bottom", color="tab:red", rotation=90)
    refs = [(x, e["reference"]) for e, x in zip(summary, xs) if isinstance(e["reference"], int | float)]
    if refs:
        ax.plot(
            [x for x, _ in refs], [v for _, v in refs], "D", color="tab:orange", label=grid.reference_label
        )
    finite = [v for v in means if not math.isnan(v)] + [v for _, v in refs]
    if finite and m.mode == "max":
        lo, hi = min(finite), max(finite)
        pad = max(1e-9, (hi - lo) * 0.6 + max([*stds, 0.0]))
        ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(m.title)
    ax.set_title(grid.title or grid.name, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)
