"""One row per job of a multirun (overrides, status, best test accuracy), in <sweep dir>/summary.csv.

Kept up to date by the Hydra callback `SweepSummary` (conf/config.yaml, hydra.callbacks): each job
records its outcome in <job dir>/job_result.json and refreshes the summary as it ends, and the
launching process rewrites it when the sweep ends or fails. A job that failed, diverged, was
killed or never started still gets its row. By hand, at any time:

    python -m eqprop.sweep_summary results/multirun/<date>/<time>

Statuses: finished, diverged, failed, config error, interrupted (stopped by a signal and not
requeued), killed (SLURM ended it without a result: cancelled, out of memory, time-out with no
requeue left), incomplete (started, no result yet: running or waiting for its requeue), not
started. Imports no torch: it runs at the start of every Hydra run.
"""
import atexit
import csv
import fcntl
import io
import itertools
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from eqprop.runs import (RESULT, Metrics, effective_overrides, job_result, one_line, read_metrics, record_job,
                         status_of, write_text_atomic)
from eqprop.sweep_dir import make_sweep_dir

log = logging.getLogger(__name__)

SUMMARY = "summary.csv"
COLUMNS = ["job", "status", "best_test_acc", "final_test_acc", "epochs", "overrides", "error", "job_id", "dir"]


def expected_jobs(sweep_dir: Path) -> Optional[List[List[str]]]:
    """The override lists of every job of the sweep, in job-number order, rebuilt from the
    multirun.yaml that Hydra's basic sweeper saves before launching (so jobs that never started
    still get a row). None when that is not possible (another sweeper, another subdir layout)."""
    f = sweep_dir / "multirun.yaml"
    if not f.is_file():
        return None
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        hydra = OmegaConf.load(f).hydra
        if not str(hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return None
        if OmegaConf.to_container(hydra.sweep, resolve=False).get("subdir") != "${hydra.job.num}":
            return None
        params = hydra.sweeper.get("params") or {}
        args = [f"{k}={v}" for k, v in params.items()] + list(hydra.overrides.task)
        # the basic sweeper's expansion: every combination of the swept values, the first key varying
        # slowest; a key given again (command line after sweeper.params) keeps its place, takes the new value
        values = {}
        for o in OverridesParser.create().parse_overrides(args):
            key = o.get_key_element()
            if not o.is_sweep_override():
                values[key] = [f"{key}={o.get_value_element_as_str()}"]
            elif o.is_discrete_sweep():
                values[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            else:  # an interval: only other sweepers (optuna) sample it
                return None
        return [list(job) for job in itertools.product(*values.values())]
    except Exception as err:  # a summary without the never-started jobs beats no summary
        log.debug("cannot list the jobs of %s: %s", sweep_dir, err)
        return None


def job_rows(sweep_dir) -> List[dict]:
    sweep_dir = Path(sweep_dir)
    expected = expected_jobs(sweep_dir) or []
    dirs = {str(i): sweep_dir / str(i) for i in range(len(expected))}
    # jobs of another layout, or beyond the list: every dir that Hydra wrote a job config into
    for d in sorted(sweep_dir.iterdir()) if sweep_dir.is_dir() else []:
        if (d / ".hydra" / "overrides.yaml").is_file():
            dirs.setdefault(d.name, d)
    rows = []
    def job_order(name):  # 2 before 10; dirs of other layouts after the numbered ones
        return (0, int(name), "") if name.isdigit() else (1, 0, name)

    for name, d in sorted(dirs.items(), key=lambda kv: job_order(kv[0])):
        result, m = job_result(d), read_metrics(d) or Metrics()
        if result.get("status"):
            status = result["status"]
        elif m.problem is not None and m.problem.get("status") == "diverged":
            status = "diverged"
        elif d.is_dir():
            status = "incomplete"
        else:
            status = "not started"
        overrides = effective_overrides(d)
        if overrides is None and name.isdigit() and int(name) < len(expected):
            overrides = expected[int(name)]
        rows.append({"job": name, "status": status, "best_test_acc": m.best_test_acc,
                     "final_test_acc": m.final_test_acc, "epochs": m.last_epoch, "all_overrides": overrides or [],
                     "error": one_line(result.get("error")), "job_id": result.get("job_id"),
                     "dir": str(d.relative_to(sweep_dir))})
    # show what tells the jobs apart; what all of them share is noise in a table
    by_key = {}
    for r in rows:
        for o in r["all_overrides"]:
            by_key.setdefault(o.split("=", 1)[0], []).append(o)
    varying = {k for k, v in by_key.items() if len(set(v)) > 1 or len(v) < len(rows)}
    for r in rows:
        r["overrides"] = " ".join(o for o in r["all_overrides"] if o.split("=", 1)[0] in varying) or \
            " ".join(r["all_overrides"])
    return rows


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_summary(sweep_dir) -> Path:
    """Rewrite <sweep dir>/summary.csv from what the jobs left on disk. Safe to call from several
    jobs at once: they take turns on a lock, and the file is replaced atomically."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW, no truncation: a link planted at the lock's name is neither followed nor emptied
    fd = os.open(sweep_dir / ".summary.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = job_rows(sweep_dir)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
        write_text_atomic(sweep_dir / SUMMARY, buf.getvalue())
    return sweep_dir / SUMMARY


def format_table(rows: List[dict]) -> str:
    cols = ["job", "status", "best_test_acc", "epochs", "overrides", "error"]
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


class SweepSummary(Callback):
    """hydra.callbacks.sweep_summary: keeps <sweep dir>/summary.csv current during a multirun."""

    def __init__(self) -> None:
        self._sweep_dir: Optional[Path] = None
        self._ended = False

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # before the launcher or the sweeper make it with the umask's mode
        self._sweep_dir = make_sweep_dir(config).absolute()
        # A failed job makes the sweeper raise once its batch is over, and then on_multirun_end
        # never runs; atexit still does (also after Ctrl-C), so the table is always written.
        atexit.register(self._at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._report(sys.stdout)
        self._ended = True

    def _at_exit(self) -> None:
        if not self._ended:
            self._report(sys.stderr)

    def _report(self, stream) -> None:
        if self._sweep_dir is None or not self._sweep_dir.is_dir():
            return
        try:
            path = write_summary(self._sweep_dir)
            print(f"[eqprop] sweep summary: {path}\n{format_table(job_rows(self._sweep_dir))}", file=stream, flush=True)
        except Exception as err:  # never turn a finished sweep into a crash
            print(f"[eqprop] could not write the sweep summary in {self._sweep_dir}: {err}", file=sys.stderr)

    @staticmethod
    def _is_multirun(config: DictConfig) -> bool:
        from hydra.types import RunMode

        return config.hydra.mode == RunMode.MULTIRUN

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if self._is_multirun(config):
            # a requeued job starts again in its own dir: its earlier outcome no longer holds
            (Path(config.hydra.runtime.output_dir) / RESULT).unlink(missing_ok=True)

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if not self._is_multirun(config):
            return
        from hydra.core.utils import JobStatus

        failed = job_return.status == JobStatus.FAILED
        err = job_return._return_value if failed else None
        try:
            record_job(config.hydra.runtime.output_dir, status_of(err) if failed else "finished",
                       error=f"{type(err).__name__}: {err}" if failed else None,
                       job_id=str(config.hydra.job.get("id")), overrides=list(job_return.overrides or []))
            write_summary(Path(config.hydra.sweep.dir).absolute())
        except Exception as e:  # the job's own outcome matters more than the table
            log.warning("sweep summary not updated: %s", e)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m eqprop.sweep_summary <sweep dir>   (e.g. results/multirun/2026-01-31/12-00-00)",
              file=sys.stderr)
        return 2
    d = Path(argv[0])
    if not d.is_dir():
        print(f"[eqprop] error: {d} is not a directory; give a sweep dir (it holds multirun.yaml and one "
              "subdir per job)", file=sys.stderr)
        return 2
    rows = job_rows(d)
    if not rows:
        print(f"[eqprop] error: {d} holds no jobs (no multirun.yaml, no <job>/.hydra/overrides.yaml)",
              file=sys.stderr)
        return 2
    path = write_summary(d)
    print(f"{format_table(rows)}\n\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
