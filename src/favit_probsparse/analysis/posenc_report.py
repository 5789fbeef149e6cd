"""Tables for ``results/posenc-ablation.md``: our mean ± std beside the report's numbers, per report table.

``python -m favit_probsparse.analysis.posenc_report results/posenc`` prints the markdown tables built from the
ablation runner's JSON files (``posenc-ablation-etth1.json``, ``posenc-ablation-ettm1.json``). Because the
reduced budget shifts every row's level, each table also shows the change relative to the table's vanilla row
(ours and the report's), which is the comparison the report's conclusions rest on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TABLES = [
    (
        "Table 2 — ΔV attention, ETTh1",
        "etth1",
        "vanilla",
        ["vanilla", "dv_value", "dv_value_temporal", "dv_all", "dv_all_deep"],
    ),
    (
        "Table 3 — ΔV attention, ETTm1",
        "ettm1",
        "vanilla",
        ["vanilla", "dv_value", "dv_value_temporal", "dv_all"],
    ),
    ("Table 4 — Legendre (PoPE), ETTh1", "etth1", "vanilla", ["vanilla", "pope", "pope_dv"]),
    (
        "Table 5 — cross terms, ETTh1",
        "etth1",
        "vanilla",
        ["vanilla", "vanilla_full", "cross_full", "all_full"],
    ),
    (
        "Table 6 — pos-pos term / no position embedding, ETTh1",
        "etth1",
        "vanilla",
        ["vanilla", "nope", "vanilla_full", "pospos_full", "all_full"],
    ),
]


def _ref(s):
    if not s:
        return None, None
    a, b = (float(x) for x in str(s).split("/"))
    return a, b


def _fmt(m, key, digits=3):
    v = m["metrics"].get(key)
    if not v or not v.get("n"):
        return "–", None
    vals = ", ".join(f"{x:.{digits}f}" for x in v["values"])
    sd = f" ± {v['std']:.{digits}f}" if v["n"] > 1 else ""
    return f"{v['mean']:.{digits}f}{sd} ({vals})", v["mean"]


def tables(folder: str | Path) -> str:
    folder = Path(folder)
    data = {}
    for key in ("etth1", "ettm1"):
        p = folder / f"posenc-ablation-{key}.json"
        if p.exists():
            data[key] = {r["row"]: r for r in json.loads(p.read_text())["summary"]}
    out = []
    for title, key, base, rows in TABLES:
        if key not in data:
            continue
        d = data[key]
        out += [
            f"### {title}",
            "",
            "| row | ours MSE (mean ± std; per seed) | ours MAE | seed MSE / MAE | "
            "ours ΔMSE vs vanilla | report ΔMSE vs vanilla |",
            "|---|---|---|---|---|---|",
        ]
        _, base_ours = _fmt(d[base], "test_mse") if base in d else ("–", None)
        base_rep = _ref(d[base]["reference"])[0] if base in d else None
        for r in rows:
            if r not in d:
                continue
            m = d[r]
            mse, mse_mean = _fmt(m, "test_mse")
            mae, _ = _fmt(m, "test_mae")
            rs, ra = _ref(m["reference"])
            rep = f"{rs} / {ra}" if rs is not None else "– (our control)"
            dours = (
                f"{mse_mean - base_ours:+.3f}"
                if mse_mean is not None and base_ours is not None and r != base
                else ""
            )
            drep = f"{rs - base_rep:+.3f}" if rs is not None and base_rep is not None and r != base else ""
            out.append(f"| {m['label']} | {mse} | {mae.split(' (')[0]} | {rep} | {dours} | {drep} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(sys.argv[1] if len(sys.argv) > 1 else "results/posenc"))
