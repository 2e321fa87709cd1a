"""Find the training runs under sweep or run dirs and read each one back from its own files.

A run dir is any dir with .hydra/config.yaml (written by Hydra before the job starts, so a job that
crashed early is still found). Its settings are the ones it last trained with and its epochs come
from metrics.jsonl (both read by eqprop.runs); a run is complete when every configured epoch is
there with status "ok", and otherwise carries a `problem` that says why not.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from eqprop.runs import effective_config_path, job_result, read_metrics, stored_config

# W&B's, Hydra's (.hydra*) and submitit's own folders never hold runs; skipping them keeps the walk short
SKIP_DIRS = {"wandb", ".submitit", "__pycache__"}


@dataclass
class RunRecord:
    path: Path
    config: dict
    history: List[dict] = field(default_factory=list)   # one "ok" line per epoch, in epoch order
    problem: Optional[str] = None                        # None: all configured epochs done

    def get(self, dotted: str, default=None):
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def find_run_dirs(roots) -> List[Path]:
    found = []
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".hydra"))
            if (Path(dirpath) / ".hydra" / "config.yaml").is_file():
                found.append(Path(dirpath))
    return sorted(set(found))


def _job_error(run_dir: Path) -> str:
    """The sweep callback's job_result.json, where there is one, says how the job ended."""
    r = job_result(run_dir)
    if r.get("status") in (None, "finished"):
        return ""
    return f" (job {r['status']}" + (f": {str(r['error']).splitlines()[0][:200]}" if r.get("error") else "") + ")"


def load_run(run_dir: Path) -> Optional[RunRecord]:
    """None for dirs of other modes (evaluate / gducheck keep their config in .hydra-<mode>-<n>)."""
    try:
        config = stored_config(run_dir) or {}
    except Exception as err:  # noqa: BLE001
        where = effective_config_path(run_dir).relative_to(run_dir)
        return RunRecord(run_dir, {}, problem=f"unreadable {where} ({type(err).__name__}: {err})")
    if config.get("mode", "train") != "train":
        return None
    rec = RunRecord(run_dir, config)
    metrics = read_metrics(run_dir)
    if metrics is None:
        rec.problem = "no metrics.jsonl: it stopped before its first epoch" + _job_error(run_dir)
        return rec
    rec.history, bad = metrics.epochs, metrics.problem
    wanted = config.get("epochs")
    if bad is not None:
        where = f" at epoch {bad.get('epoch')}" + (f", batch {bad['batch']}" if "batch" in bad else "")
        what = bad.get("non_finite")
        rec.problem = f"{bad['status']}{where}" + (f" (NaN or Inf in {', '.join(what)})" if what else "")
    elif not rec.history:
        rec.problem = "no epochs in metrics.jsonl" + _job_error(run_dir)
    elif isinstance(wanted, int) and len(rec.history) < wanted:
        rec.problem = f"incomplete: {len(rec.history)} of {wanted} epochs" + _job_error(run_dir)
    return rec


def collect(roots) -> List[RunRecord]:
    return [r for r in (load_run(d) for d in find_run_dirs(roots)) if r is not None]
