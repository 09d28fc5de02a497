"""An experiment's results: mean ± std, median and range over seeds beside the paper's numbers, as JSON and
Markdown."""

from __future__ import annotations

import math

import numpy as np

from slotref.experiments.plans import EXPERIMENTS, Options


def summarise(name: str, opts: Options, configs, tables, runs, command: str) -> dict:
    """mean ± std (NumPy's std, ddof 0), median and range over seeds of every cell; seeds that diverged are
    counted, not averaged; runs another process was training are left out and listed under ``busy``."""
    failed_rows = {}
    for run in runs:
        if run["status"] == "diverged":
            configuration = next(c for c in configs if c.name == run["configuration"])
            for probe in configuration.probes:
                for column in probe.columns:
                    failed_rows[(probe.table, probe.row, column)] = failed_rows.get((probe.table, probe.row,
                                                                                     column), 0) + 1
    out_tables = []
    for table in tables:
        rows = []
        for row in table.rows:
            cells = {}
            for column in table.columns:
                values = [c["value"] for r in runs for c in r["cells"]
                          if (c["table"], c["row"], c["column"]) == (table.key, row, column)]
                failed = failed_rows.get((table.key, row, column), 0)
                if values or failed:
                    cells[column] = {"mean": float(np.mean(values)) if values else None,
                                     "std": float(np.std(values)) if values else None,
                                     "median": float(np.median(values)) if values else None,
                                     "min": float(np.min(values)) if values else None,
                                     "max": float(np.max(values)) if values else None,
                                     "n": len(values), "diverged": failed, "values": values}
            if cells:
                paper = {col: list(table.paper[(row, col)]) for col in table.columns if (row, col) in table.paper}
                rows.append({"row": row, "cells": cells, "paper": paper})
        if rows:
            columns = [c for c in table.columns if any(c in r["cells"] for r in rows)]
            out_tables.append({"key": table.key, "title": table.title, "row_header": table.row_header,
                               "columns": columns, "rows": rows, "note": table.note})
    experiment = EXPERIMENTS[name]
    return {"experiment": name, "summary": experiment.summary, "paper": experiment.paper, "command": command,
            "preset": opts.preset, "steps": opts.steps, "seeds": list(range(opts.seeds)), "device": opts.device,
            "budgets": sorted({r["budget"] for r in runs}), "unit": "%", "tables": out_tables, "runs": runs,
            "busy": [r["run_dir"] for r in runs if r["status"] == "busy"]}


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return ""
    text = "—" if cell["mean"] is None else f"{cell['mean']:.1f} ± {cell['std']:.1f}"
    if cell["n"] >= 2:
        text += f" (median {cell['median']:.1f}, {cell['min']:.1f} to {cell['max']:.1f})"
    if cell["diverged"]:
        text += f" ({cell['diverged']} of {cell['n'] + cell['diverged']} diverged)"
    return text


def render_markdown(result: dict) -> str:
    lines = [f"# {result['experiment']}: {result['summary']}", "",
             f"Paper: {result['paper']}. Command: `{result['command']}` (device {result['device']}).", "",
             f"Mean ± standard deviation over seeds {', '.join(map(str, result['seeds']))}, in % (with two seeds "
             "or more: the median and the range); a paper row follows each row the paper gives numbers for "
             "(5 seeds).", ""]
    if result.get("busy"):
        lines += [f"Left out, being trained by another process: {', '.join(result['busy'])}; run the "
                  "command again when it has finished.", ""]
    lines += [f"- {b}" for b in result["budgets"]] + [""]
    for table in result["tables"]:
        cols = table["columns"]
        lines += [f"## {table['title']}", "",
                  "| " + " | ".join([table["row_header"]] + cols) + " |",
                  "|---" + "|---:" * len(cols) + "|"]
        for row in table["rows"]:
            lines.append("| " + " | ".join([row["row"]] + [_cell_text(row["cells"].get(c)) for c in cols]) + " |")
            if row["paper"]:
                lines.append("| " + " | ".join([f"{row['row']}, paper"] +
                                               [f"{row['paper'][c][0]:.1f} ± {row['paper'][c][1]:.1f}"
                                                if c in row["paper"] else "" for c in cols]) + " |")
        if table["note"]:
            lines += ["", table["note"]]
        lines.append("")
    return "\n".join(lines)


def json_safe(x):
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
