"""Find the training runs under sweep or run dirs and read each one back from its own files.

A run dir is any dir with .hydra/config.yaml (written by Hydra before the job starts, so a job that
crashed early is still found). Its settings are the ones it last trained with (a resumed run's
.hydra-resume-<n>/effective.yaml, eqprop.run_record); its epochs come from metrics.jsonl; a run is
complete when every configured epoch is there with status "ok", and otherwise carries a `problem`
that says why not.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

from eqprop.run_record import effective_config_path

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


def _read_config(path: Path) -> dict:
    """The YAML (safe loader), with references between its keys (`${dynamics.T1}`) resolved. A
    value that calls a resolver (`${oc.env:...}`, `${now:...}`, any registered one) is kept as the
    text it is, never evaluated: a run dir is data written by anyone, and reading it must neither
    print this process's environment nor run code."""
    from omegaconf import grammar_parser
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser

    def calls_a_resolver(text: str) -> bool:
        try:
            stack = [grammar_parser.parse(text)]
        except Exception:  # noqa: BLE001 - not a valid interpolation: OmegaConf would refuse it as well
            return True
        while stack:
            node = stack.pop()
            if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
                return True
            stack.extend(node.getChildren() if hasattr(node, "getChildren") else ())
        return False

    def literal(v):  # escaped: OmegaConf then reads "${" as two characters, not an interpolation
        if isinstance(v, dict):
            return {k: literal(x) for k, x in v.items()}
        if isinstance(v, list):
            return [literal(x) for x in v]
        if isinstance(v, str) and "${" in v and calls_a_resolver(v):
            v = v.replace("${", "\\${")
            if calls_a_resolver(v):
                raise ValueError(f"cannot keep {v!r} from being evaluated")
        return v

    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    try:
        return OmegaConf.to_container(OmegaConf.create(literal(raw)), resolve=True)
    except Exception:  # noqa: BLE001 - a dangling reference: the plain values still group runs
        return raw


def _job_error(run_dir: Path) -> str:
    """The sweep callback's job_result.json, where there is one, says how the job ended."""
    f = run_dir / "job_result.json"
    try:
        r = json.loads(f.read_text())
    except (OSError, ValueError):
        return ""
    if r.get("status") in (None, "finished"):
        return ""
    return f" (job {r['status']}" + (f": {str(r['error']).splitlines()[0][:200]}" if r.get("error") else "") + ")"


def read_metrics(path: Path):
    """Epoch lines, and the last non-ok line unless a resumed run got past it. A torn last line
    (a kill mid-write) is skipped."""
    epochs, bad = {}, None
    for line in path.read_text().splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("status", "ok") != "ok":
            bad = m
            continue
        epochs[m["epoch"]] = m  # a requeue that redid an epoch: its last line counts
    if bad is not None and epochs and max(epochs) >= bad.get("epoch", 0):
        bad = None
    return [epochs[e] for e in sorted(epochs)], bad


def stored_config(run_dir: Path) -> Optional[dict]:
    """The settings the run last trained with (None when it keeps none); may raise on a broken file."""
    path = effective_config_path(run_dir)
    return _read_config(path) if path.is_file() else None


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
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        rec.problem = "no metrics.jsonl: it stopped before its first epoch" + _job_error(run_dir)
        return rec
    rec.history, bad = read_metrics(metrics)
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
