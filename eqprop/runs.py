"""A run's records, read back from its dir, by one set of rules for every reader (the engine when it
resumes, the report, the sweep summary, the search, the W&B logger):

  metrics.jsonl     one JSON line per finished epoch (status "ok"), a "diverged" line where training
                    stopped; appended only, so a kill can leave a torn last line (read_metrics)
  settings          .hydra/config.yaml, or the latest resume's effective.yaml (eqprop.run_record):
                    the settings the run last trained with (stored_config, effective_overrides)
  job_result.json   how a job of a multirun ended (record_job, job_outcome)

Also the one atomic text write (eqprop.checkpoint.write_text_atomic) and the EP/BPTT family of an
estimator. No torch here: the sweep summary runs at the start of every Hydra job.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf

from eqprop.checkpoint import append_line, write_text_atomic  # the one atomic write; also eqprop.runs'
from eqprop.run_record import EFFECTIVE, FIRST, RESUME, RESUME_RECORD, numbered_dirs

METRICS = "metrics.jsonl"
RESULT = "job_result.json"

# BPTT first: the reference the EP estimates are read against (the report's rows, in this order)
ESTIMATOR_ORDER = ("bptt", "one_sided", "random_sign", "symmetric", "n_point", "holomorphic", "cep")


def family(estimator: str) -> str:
    """BPTT, the reference, or EP: every other estimator is an EP estimate of its gradient."""
    return "BPTT" if estimator == "bptt" else "EP"


# --- metrics.jsonl ------------------------------------------------------------------------------

@dataclass
class Metrics:
    """What metrics.jsonl says. A line counts when it is a JSON object with an epoch: anything else
    (a line torn by a kill mid-write) is skipped."""
    epochs: List[dict] = field(default_factory=list)  # the "ok" line of each epoch, in epoch order
    problem: Optional[dict] = None  # the last line that is not "ok", unless a resume got past its epoch

    @property
    def best_test_acc(self) -> Optional[float]:
        return max((m["test_acc"] for m in self.epochs if "test_acc" in m), default=None)

    @property
    def final_test_acc(self) -> Optional[float]:
        return next((m["test_acc"] for m in reversed(self.epochs) if "test_acc" in m), None)

    @property
    def last_epoch(self) -> Optional[int]:
        return self.epochs[-1]["epoch"] if self.epochs else None


def parse_metrics(text: str) -> Metrics:
    by_epoch, problem = {}, None
    for line in text.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if not isinstance(m, dict) or "epoch" not in m:
            continue
        if m.get("status", "ok") != "ok":
            problem = m
        else:
            by_epoch[m["epoch"]] = m  # a requeue that redid an epoch: its last line counts
    if problem is not None and by_epoch and max(by_epoch) >= problem["epoch"]:
        problem = None  # a resumed run trained past it
    return Metrics([by_epoch[e] for e in sorted(by_epoch)], problem)


def read_metrics(run_dir) -> Optional[Metrics]:
    """None when the run has no metrics.jsonl (or it cannot be read)."""
    try:
        text = (Path(run_dir) / METRICS).read_bytes().decode(errors="replace")
    except OSError:
        return None
    return parse_metrics(text)


def reconcile_metrics(path, history: List[dict]) -> None:
    """For the engine when it resumes. The epoch's line is appended after its checkpoint is saved, so
    a kill in between leaves metrics.jsonl one epoch behind the checkpoint's history: append what the
    file lacks, never rewrite it; a line cut by the kill is closed first so the next one is whole."""
    path = Path(path)
    have = set()
    if path.exists():
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            with open(path, "a") as f:
                f.write("\n")
        have = {m["epoch"] for m in parse_metrics(raw.decode(errors="replace")).epochs}
    for m in history:
        if m["epoch"] not in have:
            append_line(path, json.dumps(m))


# --- the settings a run last trained with ---------------------------------------------------------

def effective_config_path(run_dir) -> Path:
    """The latest resume's effective.yaml, else the first command's .hydra/config.yaml."""
    for d in reversed(numbered_dirs(run_dir, RESUME)):
        if (d / EFFECTIVE).is_file():
            return d / EFFECTIVE
    return Path(run_dir) / FIRST / "config.yaml"


def read_config(path) -> dict:
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


def stored_config(run_dir) -> Optional[dict]:
    """The settings the run last trained with (None when it keeps none); may raise on a broken file."""
    path = effective_config_path(run_dir)
    return read_config(path) if path.is_file() else None


def resume_records(run_dir) -> List[dict]:
    """Every resume of the run, oldest first (unreadable records are skipped)."""
    out = []
    for d in numbered_dirs(run_dir, RESUME):
        try:
            rec = OmegaConf.to_container(OmegaConf.load(d / RESUME_RECORD))
        except Exception:  # noqa: BLE001 - a torn or missing record: the others still count
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def changed_settings(run_dir) -> Dict[str, object]:
    """key -> value for every setting a resume changed (the latest change of a key wins)."""
    out = {}
    for rec in resume_records(run_dir):
        for k, change in (rec.get("changed") or {}).items():
            if isinstance(change, dict) and "to" in change:
                out[k] = change["to"]
    return out


def effective_overrides(run_dir) -> Optional[List[str]]:
    """The job's own command-line overrides, then `key=value` for every setting a later resume of it
    changed; None when Hydra wrote no (readable) overrides.yaml."""
    f = Path(run_dir) / FIRST / "overrides.yaml"
    try:
        first = [str(o) for o in OmegaConf.load(f)] if f.is_file() else None
    except Exception:  # noqa: BLE001 - unreadable: the caller falls back on the sweep's job list
        return None
    changed = {k: v for k, v in changed_settings(run_dir).items() if k != "resume"}
    if first is None or not changed:
        return first
    shown = {k: json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else
             "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in changed.items()}
    return [o for o in first if o.split("=", 1)[0].lstrip("+~") not in shown] + [f"{k}={v}" for k, v in shown.items()]


# --- how a job of a multirun ended ------------------------------------------------------------------

# exception class -> status, for jobs that raised (Hydra hands the exception to on_job_end)
_STATUS_OF_ERROR = {"Diverged": "diverged", "Interrupted": "interrupted", "ConfigError": "config error",
                    "CheckpointError": "config error"}


def status_of(exc: BaseException) -> str:
    return _STATUS_OF_ERROR.get(type(exc).__name__, "failed")


def record_job(job_dir, status: str, error: Optional[str] = None, **extra) -> None:
    """The outcome of one job, next to its outputs; the summary reads it back."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(job_dir / RESULT, json.dumps({"status": status, "error": error, **extra}, indent=1))


def job_result(job_dir) -> dict:
    """job_result.json ({} while the job has none, or it cannot be read)."""
    try:
        result = json.loads((Path(job_dir) / RESULT).read_text())
    except (OSError, ValueError):
        return {}
    return result if isinstance(result, dict) else {}


def one_line(text) -> Optional[str]:
    """The last line of an error (the exception's message, not its traceback), at most 300 characters."""
    if text is None:
        return None
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else None


def job_outcome(job_dir) -> dict:
    """How one job ended, read back from its own files: status (None while it has no outcome), error,
    best_test_acc, final_test_acc, epochs (from metrics.jsonl)."""
    result, m = job_result(job_dir), read_metrics(job_dir) or Metrics()
    return {"status": result.get("status"), "error": one_line(result.get("error")),
            "best_test_acc": m.best_test_acc, "final_test_acc": m.final_test_acc, "epochs": m.last_epoch}
