"""Model size and cost of every row of a grid, without data or training (``favit-ps ablate --stats-only``).

The runner knows nothing of tasks: it builds the config's LightningDataModule (no data is read) and asks the
LightningModule class what it needs from it through an optional hook::

    @classmethod
    def model_stats_inputs(cls, init_args: dict, datamodule) -> tuple[dict, dict]:
        # complete init_args from the data (e.g. the class count) and return kwargs for model_stats()

then calls the module's ``model_stats(**kwargs)`` (parameters, GMACs, ...) or counts its parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from favit_probsparse.config import apply_overrides, read_config
from favit_probsparse.experiments.grid import Grid
from favit_probsparse.experiments.report import stat_cell
from favit_probsparse.experiments.worker import model_stats_of
from favit_probsparse.imports import import_class
from favit_probsparse.utils.io import write_text
from favit_probsparse.utils.provenance import hardware_summary, status_line, utc_now

__all__ = ["model_stats_table", "write_stats_report"]


def _class_of(spec: dict, what: str):
    return import_class(spec.get("class_path"), what=f"{what}.class_path")


def _row_stats(cfg: dict) -> dict[str, Any]:
    model_spec = cfg.get("model") or {}
    data_spec = cfg.get("data") or {}
    cls = _class_of(model_spec, "model")
    init = dict(model_spec.get("init_args") or {})
    kwargs: dict[str, Any] = {}
    hook = getattr(cls, "model_stats_inputs", None)
    if callable(hook) and data_spec:
        dm = _class_of(data_spec, "data")(**dict(data_spec.get("init_args") or {}))
        init, kwargs = hook(init, dm)
    lm = cls(**init)
    if callable(getattr(lm, "model_stats", None)):
        return dict(lm.model_stats(**kwargs))
    return model_stats_of(lm)


def model_stats_table(grid: Grid, extra_overrides: dict | None = None) -> list[dict[str, Any]]:
    """Build each row's LightningModule (no data, no training) and collect its statistics."""
    base = read_config(grid.base_config)
    out = []
    for row in grid.rows:
        cfg = apply_overrides(base, {**grid.base_overrides, **(extra_overrides or {}), **row.overrides})
        entry: dict[str, Any] = {"row": row.name, "label": row.label, "reference": row.reference}
        try:
            entry.update(_row_stats(cfg))
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {e}"
        out.append(entry)
    return out


def _presentation(grid: Grid) -> tuple[dict[str, str], str]:
    """The task's extra columns and note for the table: ``STATS_COLUMNS`` / ``STATS_NOTE`` of the module class the
    grid's base config names (none when it names none or cannot be imported)."""
    try:
        cls = _class_of(read_config(grid.base_config).get("model") or {}, "model")
    except Exception:
        return {}, ""
    return dict(getattr(cls, "STATS_COLUMNS", {}) or {}), str(getattr(cls, "STATS_NOTE", "") or "")


def write_stats_report(grid: Grid, stats: list[dict], out_dir: Path, command: str) -> tuple[Path, str]:
    """Write ``<out>/<name>-model-stats.md`` (params, GMACs per row, the task's own columns, the reference)."""
    columns, note = _presentation(grid)
    extra = {k: t for k, t in columns.items() if any(k in e for e in stats)}
    has_ref = any(e["reference"] is not None for e in stats)
    header = ["Row", "Params (M)", "GMACs", *extra.values()] + ([grid.reference_label] if has_ref else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for e in stats:
        if "error" in e:
            cells = [e["label"], f"ERROR: `{e['error'][:200]}`", "–"] + ["–"] * len(extra)
        else:
            cells = [e["label"], stat_cell(e.get("params_m"), 3), stat_cell(e.get("gmacs"), 3)]
            cells += [str(e.get(k, "–")) for k in extra]
        if has_ref:
            cells.append("–" if e["reference"] is None else str(e["reference"]))
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    md = [
        f"# Model size and cost: {grid.title or grid.name}",
        "",
        status_line(
            "Parameters and GMACs per row (they do not depend on the machine)",
            utc_now()[:16] + " UTC",
            hardware_summary(),
            command,
        ),
        "",
        table,
        "",
        "Parameters of the network (EMA copies excluded); GMACs (multiply-accumulates, often called FLOPs) of "
        "one forward pass of one sample, counted by torch's FLOP counter (matmuls, convolutions, attention). "
        "Nothing is trained for this table." + (f" {note}" if note else ""),
        "",
        *([grid.reference_note.strip(), ""] if grid.reference_note else []),
        f"- Command: `{command}`",
        f"- Grid: `{grid.path}`; base config: `{grid.base_config}`",
        f"- Hardware: {hardware_summary()}",
        f"- Written: {utc_now()}",
    ]
    path = write_text(Path(out_dir) / f"{grid.name}-model-stats.md", "\n".join(md) + "\n")
    return path, table
