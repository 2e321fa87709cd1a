"""EP versus BPTT from the runs on disk: `python -m eqprop.report <sweep or run dir> [...] [--out DIR]`.

Writes report.md (one table per task/model/loss, one row per estimator: best and final test accuracy as
mean ± std over seeds, runs, epochs, time per epoch; then every run that failed and why) and report.png
(test accuracy against epoch, mean with a ±std band over seeds). Needs no W&B: it reads each run's
metrics.jsonl and .hydra/config.yaml.
"""
import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

from eqprop.report_runs import RunRecord, collect

# BPTT first: the baseline the EP estimates are read against
ESTIMATOR_ORDER = ["bptt", "one_sided", "random_sign", "symmetric", "n_point", "holomorphic", "cep"]
# settings that do not change what a run computes, or that are averaged over (seed)
NOT_A_SETTING = ("seed", "logger", "device", "resume", "load_path", "sweep", "experiment", "mode",
                 "task.data_dir", "task.download", "task.num_workers")


class ReportError(ValueError):
    pass


@dataclass
class Row:
    estimator: str
    label: str
    ok: List[RunRecord] = field(default_factory=list)
    failed: List[RunRecord] = field(default_factory=list)

    @property
    def family(self) -> str:
        return "BPTT" if self.estimator == "bptt" else "EP"

    def column(self, key: str) -> List[float]:
        if key == "best":
            return [max(h["test_acc"] for h in r.history) for r in self.ok]
        return [r.history[-1]["test_acc"] for r in self.ok]

    def seconds_per_epoch(self) -> float:
        s = [h["seconds"] for r in self.ok for h in r.history if "seconds" in h]
        return statistics.fmean(s) if s else float("nan")

    def curve(self) -> Tuple[List[int], List[float], List[float]]:
        """Per epoch: mean and std of the test accuracy over the runs that reached it."""
        by_epoch: Dict[int, List[float]] = {}
        for r in self.ok:
            for h in r.history:
                by_epoch.setdefault(h["epoch"], []).append(h["test_acc"])
        epochs = sorted(by_epoch)
        return (epochs, [statistics.fmean(by_epoch[e]) for e in epochs],
                [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])


def _flat(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = str(v)
    return out


def _settings(run: RunRecord) -> dict:
    flat = _flat(run.config)
    keep = {k: v for k, v in flat.items()
            if not any(k == p or k.startswith(p + ".") for p in NOT_A_SETTING) and k != "estimator.name"}
    if run.get("estimator.name") == "bptt":
        keep.pop("estimator.beta", None)  # BPTT trains without beta
    return keep


def group_key(run: RunRecord) -> Tuple[str, str, str]:
    return tuple(str(run.get(f"{k}.name", "?")) for k in ("task", "model", "loss"))


def build_rows(runs: List[RunRecord]) -> List[Row]:
    """One row per estimator and per combination of the settings that vary inside the group, so
    seeds are only averaged over runs that are otherwise the same."""
    settings = {id(r): _settings(r) for r in runs}
    keys = sorted({k for s in settings.values() for k in s})
    # a key some runs lack (beta for BPTT) varies only if the runs that have it disagree
    varying = [k for k in keys if len({s[k] for s in settings.values() if k in s}) > 1]
    rows: Dict[tuple, Row] = {}
    for r in runs:
        est = str(r.get("estimator.name", "?"))
        extra = tuple((k, settings[id(r)][k]) for k in varying if k in settings[id(r)])
        label = est + (" (" + ", ".join(f"{k}={v}" for k, v in extra) + ")" if extra else "")
        row = rows.setdefault((est, extra), Row(est, label))
        (row.failed if r.problem else row.ok).append(r)
    order = {e: i for i, e in enumerate(ESTIMATOR_ORDER)}
    return sorted(rows.values(), key=lambda w: (order.get(w.estimator, len(order)), w.estimator, w.label))


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
    from eqprop.report_plot import plot_report

    plot_report(rows, out_dir / "report.png")
    (out_dir / "report.md").write_text(markdown(rows, runs, roots, "report.png"))
    return {"runs": runs, "rows": rows, "md": out_dir / "report.md", "png": out_dir / "report.png"}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eqprop.report", description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", type=Path, help="sweep dirs (results/multirun/...) or run dirs")
    p.add_argument("--out", type=Path, default=None, help="where report.md and report.png go (default: the first dir)")
    args = p.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"[eqprop] error: not a directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        result = make_report(args.dirs, args.out or args.dirs[0])
    except ReportError as err:
        print(f"[eqprop] error: {err}", file=sys.stderr)
        return 2
    n_failed = sum(1 for r in result["runs"] if r.problem)
    print(f"[eqprop] report of {len(result['runs'])} runs ({n_failed} failed): {result['md']}, {result['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
