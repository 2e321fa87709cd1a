"""A run dir's record of the commands that ran in it; nothing a later command does rewrites it.

  .hydra/                 the first command (Hydra's config.yaml, overrides.yaml, hydra.yaml)
  .hydra-resume-<n>/      each later training command (resume=, a requeued job): Hydra's files for the
                          command line, plus eqprop's effective.yaml (the settings the run continued
                          with) and resume.yaml (when, from which epoch, what changed)
  .hydra-evaluate-<n>/, .hydra-gducheck-<n>/   each evaluation / GDU check of the run

The settings a run last trained with are in effective_config_path(). No torch here: launch.py
imports this module before Hydra starts.
"""
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from omegaconf import OmegaConf

FIRST = ".hydra"
RESUME = "resume"
EFFECTIVE = "effective.yaml"
RESUME_RECORD = "resume.yaml"

_chosen: Dict[tuple, str] = {}


def _numbered(run_dir: Path, kind: str) -> List[Path]:
    """The `.hydra-<kind>-<n>` dirs of a run, in order of n."""
    found = []
    for p in Path(run_dir).glob(f"{FIRST}-{kind}-*"):
        m = re.fullmatch(rf"{re.escape(FIRST)}-{kind}-(\d+)", p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def invocation_subdir(mode: str, resume, output_dir: str) -> str:
    """Where Hydra keeps this command's copy of the config (hydra.output_subdir): `.hydra` for the first
    training command in a dir, a fresh numbered dir for any later one. Chosen once per command: Hydra
    resolves the key again after it has written the dir."""
    key = (mode, str(resume), str(output_dir))
    if key not in _chosen:
        d = Path(output_dir)
        if mode == "train" and not resume and not (d / FIRST).exists():
            _chosen[key] = FIRST
        else:
            kind = RESUME if mode == "train" else mode
            taken = _numbered(d, kind)
            n = int(taken[-1].name.rsplit("-", 1)[1]) + 1 if taken else 1
            _chosen[key] = f"{FIRST}-{kind}-{n}"
    return _chosen[key]


def effective_config_path(run_dir) -> Path:
    """The settings the run last trained with: the latest resume's effective.yaml, else the first
    command's .hydra/config.yaml."""
    for d in reversed(_numbered(run_dir, RESUME)):
        if (d / EFFECTIVE).is_file():
            return d / EFFECTIVE
    return Path(run_dir) / FIRST / "config.yaml"


def resume_records(run_dir) -> List[dict]:
    """Every resume of the run, oldest first (unreadable records are skipped)."""
    out = []
    for d in _numbered(run_dir, RESUME):
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


def _write_yaml(path: Path, data) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(OmegaConf.to_yaml(OmegaConf.create(data)))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_resume_record(record_dir: Path, effective: dict, changes: Dict[str, tuple], overrides: List[str]) -> None:
    record_dir.mkdir(parents=True, exist_ok=True)
    _write_yaml(record_dir / EFFECTIVE, effective)
    _write_yaml(record_dir / RESUME_RECORD, {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "overrides": list(overrides),
        "changed": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}})
