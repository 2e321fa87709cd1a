"""A refused command leaves the disk as it found it.

Hydra creates the run dir (with its parents), its copy of the config and the job log before eqprop
sees the config. The callback notes what existed before Hydra wrote anything; when eqprop then
refuses the command, discard_refused() removes only what this command created, so a refused
`resume=` of an existing run (or of a crashed run that holds nothing but launch.log and .hydra/)
never loses a file, and a typo leaves no empty dirs behind. No torch here: it runs before every job.
"""
import os
from pathlib import Path
from typing import Optional, Set

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")

_before: Optional[Set[Path]] = None


def _existing(run_dir: Path) -> Set[Path]:
    """The run dir and its parents, its entries and those of its .hydra* dirs, as far as they exist."""
    seen = {p for p in (run_dir, *run_dir.parents) if p.exists()}
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            seen.add(p)
            if p.name.startswith(".hydra") and p.is_dir():
                seen.update(p.iterdir())
    return seen


class RunDirGuard(Callback):
    """hydra.callbacks.run_dir_guard: a single run's snapshot, taken before Hydra creates anything."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        global _before
        _before = _existing(Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir")))))


def discard_refused(output_dir, output_subdir: Optional[str], log_name: str) -> None:
    """Remove Hydra's files and dirs of a refused single run: those it created, nothing else (and
    nothing at all when no snapshot was taken)."""
    if _before is None:
        return
    out = Path(os.path.abspath(str(output_dir)))
    files = [out / log_name] + ([out / output_subdir / f for f in HYDRA_FILES] if output_subdir else [])
    dirs = ([out / output_subdir] if output_subdir else []) + [out, *out.parents]
    try:
        for f in files:
            if f not in _before and f.is_file() and not f.is_symlink():
                f.unlink()
        for d in dirs:
            if d in _before:
                break
            d.rmdir()  # only if empty: anything else in it stays
    except OSError:  # not ours to fight over: what is left merely stays
        pass
