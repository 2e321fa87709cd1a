"""The sweep dir of a multirun, private to the user unless hydra.sweep.mode opens it: made by the
first of the sweep callback, eqprop's launchers and its optuna sweeper to reach it. No torch here."""
import os
from pathlib import Path

from omegaconf import DictConfig

# hydra.sweep.mode when the command line sets none (Hydra's schema has no default for it; give
# `+hydra.sweep.mode=0750` to open a sweep to the group): on a shared cluster a sweep's outputs and
# submitit's pickles, which run as code when a job or the launcher loads them, are the user's own
DEFAULT_SWEEP_MODE = "0700"


_CREATED_HERE = set()  # sweep dirs this process created: only those may be removed on a refusal


def created_here(path) -> bool:
    return Path(path).absolute() in _CREATED_HERE


def make_sweep_dir(config: DictConfig) -> Path:
    """The sweep dir, created (or made) hydra.sweep.mode, never open to others in between."""
    sweep = config.hydra.sweep
    text = str(sweep.mode) if "mode" in sweep else DEFAULT_SWEEP_MODE
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError(f"hydra.sweep.mode={text!r} must be an octal mode such as 0700 or 0750") from None
    path = Path(str(sweep.dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.mkdir(mode=0o700)
        _CREATED_HERE.add(path.absolute())
    os.chmod(path, mode)
    return path
