"""Checkpoints: plain data and tensors only, written atomically, loaded with weights_only=True."""
import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    pass


def save_atomic(obj, path) -> None:
    """Write to a temp file in the same dir, flush and fsync, then rename: a kill at any moment
    leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupted or truncated and cannot be loaded "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
        ) from None


def append_line(path, line: str) -> None:
    """Append one line and fsync it: earlier lines are never rewritten, so never truncated."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())
