"""EP versus BPTT from the runs on disk: `python -m eqprop.report <sweep or run dir> [...] [--out DIR]`.

Writes report.md (one table per task/model/loss, one row per estimator: best and final test accuracy as
mean ± std over seeds, runs, epochs, time per epoch; then every run that failed and why) and report.png
(test accuracy against epoch, mean with a ±std band over seeds). Needs no W&B: it reads each run's
metrics.jsonl and .hydra/config.yaml.

  collect.py   the runs under the given dirs, each read back from its own files (eqprop.runs)
  rows.py      one row per estimator and setting, seeds averaged
  markdown.py  report.md
  plot.py      report.png (and the estimators' colours, which the W&B dashboard shares)
  __main__.py  the command line
"""
from pathlib import Path
from typing import Dict, List

from eqprop.report.collect import RunRecord, collect
from eqprop.report.markdown import markdown
from eqprop.report.rows import Row, build_rows, group_key

__all__ = ["ReportError", "Row", "RunRecord", "make_report"]


class ReportError(ValueError):
    pass


def make_report(roots, out_dir: Path) -> dict:
    runs = collect(roots)
    if not runs:
        raise ReportError(f"no training runs under {', '.join(map(str, roots))} "
                          "(a run dir holds .hydra/config.yaml and metrics.jsonl); give a sweep or run dir")
    groups: Dict[tuple, List[RunRecord]] = {}
    for r in runs:
        if r.config:
            groups.setdefault(group_key(r), []).append(r)
    rows = {k: build_rows(v) for k, v in sorted(groups.items())}
    out_dir.mkdir(parents=True, exist_ok=True)
    from eqprop.report.plot import plot_report  # matplotlib: only when a report is made

    plot_report(rows, out_dir / "report.png")
    (out_dir / "report.md").write_text(markdown(rows, runs, roots, "report.png"))
    return {"runs": runs, "rows": rows, "md": out_dir / "report.md", "png": out_dir / "report.png"}
