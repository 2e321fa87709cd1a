"""report.md: one table per task/model/loss (a row per estimator and setting), then the failed runs."""
import statistics
from typing import Dict, List

from eqprop.report.collect import RunRecord
from eqprop.report.rows import Row


def _pct(values: List[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def _epochs(row: Row) -> str:
    done = sorted({len(r.history) for r in row.ok})
    return "–" if not done else (str(done[0]) if len(done) == 1 else f"{done[0]}–{done[-1]}")


def _seeds(row: Row) -> str:
    return ", ".join(str(s) for s in sorted({r.get("seed") for r in row.ok}, key=str)) or "–"


def markdown(groups: Dict[tuple, List[Row]], runs: List[RunRecord], roots, image: str) -> str:
    failed = [r for r in runs if r.problem]
    lines = ["# EP versus BPTT", "",
             f"{len(runs)} runs ({len(runs) - len(failed)} complete, {len(failed)} failed) under "
             + ", ".join(f"`{d}`" for d in roots) + ".",
             "Test accuracy in %, mean ± sample std over the complete runs (seeds) of a row; "
             "time per epoch is the training time of one epoch, in seconds.", ""]
    for (task, model, loss), rows in groups.items():
        lines += [f"## task={task}, model={model}, loss={loss}", "",
                  "| estimator | family | runs | seeds | epochs | best test acc (%) | final test acc (%) "
                  "| time / epoch (s) | failed |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for w in rows:
            sec = w.seconds_per_epoch()
            lines.append(f"| {w.label} | {w.family} | {len(w.ok)} | {_seeds(w)} | {_epochs(w)} "
                         f"| {_pct(w.column('best'))} | {_pct(w.column('final'))} "
                         f"| {'–' if sec != sec else f'{sec:.2f}'} | {len(w.failed)} |")
        lines.append("")
    lines += ["## Failed runs", ""]
    if failed:
        lines += [f"- `{r.path}` ({r.get('estimator.name', '?')}, seed {r.get('seed', '?')}): {r.problem}"
                  for r in failed]
    else:
        lines.append("None.")
    lines += ["", f"![test accuracy against epoch]({image})", ""]
    return "\n".join(lines)
