"""A run dir's record of the commands that ran in it; nothing a later command does rewrites it.

  .hydra/                 the first command (Hydra's config.yaml, overrides.yaml, hydra.yaml)
  .hydra-resume-<n>/      each later training command (resume=, a requeued job): Hydra's files for the
                          command line, plus eqprop's effective.yaml (the settings the run continued
                          with) and resume.yaml (when, from which epoch, what changed)
  .hydra-evaluate-<n>/, .hydra-gducheck-<n>/   each evaluation / GDU check of the run

Reading these records back (the settings a run last trained with): eqprop.runs. No torch here: launch.py
imports this module before Hydra starts.
"""
import re
import time
from pathlib import Path
from typing import Dict, List

from omegaconf import OmegaConf

from eqprop.checkpoint import write_text_atomic

FIRST = ".hydra"
RESUME = "resume"
EFFECTIVE = "effective.yaml"
RESUME_RECORD = "resume.yaml"

_chosen: Dict[tuple, str] = {}


def numbered_dirs(run_dir: Path, kind: str) -> List[Path]:
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
            taken = numbered_dirs(d, kind)
            n = int(taken[-1].name.rsplit("-", 1)[1]) + 1 if taken else 1
            _chosen[key] = f"{FIRST}-{kind}-{n}"
    return _chosen[key]


def _write_yaml(path: Path, data) -> None:
    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(data)))


def write_resume_record(record_dir: Path, effective: dict, changes: Dict[str, tuple], overrides: List[str]) -> None:
    record_dir.mkdir(parents=True, exist_ok=True)
    _write_yaml(record_dir / EFFECTIVE, effective)
    _write_yaml(record_dir / RESUME_RECORD, {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "overrides": list(overrides),
        "changed": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}})
