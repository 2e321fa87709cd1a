"""Checkpoints: plain data and tensors only, written atomically, loaded with weights_only=True.
Also the safe writes of every run file (atomic replace, append without following links). torch is
imported where a checkpoint is saved or loaded: the sweep summary uses the writes and imports no torch."""
import os
import tempfile
from pathlib import Path


class CheckpointError(RuntimeError):
    pass


def save_atomic(obj, path) -> None:
    """torch.save through `_replace_atomic`: a kill at any moment leaves either the old file or the
    new one, never a torn one."""
    import torch

    _replace_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path, text: str) -> None:
    """Replace a small text file (a W&B run id, a JSON result) the same way. Never through a fixed
    temp name: a link planted at one would be followed, the new file is a fresh private name."""
    _replace_atomic(path, lambda f: f.write(text.encode()))


def _replace_atomic(path, write) -> None:
    """Write to a new temp file in the same dir (mkstemp: a fresh name, created exclusively, never
    through a symbolic link), flush and fsync, then rename over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    """Make the rename itself durable: without it a power cut can bring back the old directory
    entry (or none) even though the new file's data is on disk."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def remove_stale_temps(run_dir) -> list:
    """Temp files that a killed save_atomic left behind (only a kill -9 or a crash skips the
    clean-up): never the real checkpoint, which the rename replaces in one step."""
    gone = []
    for name in ("checkpoint.pt", "model.pt", "final_model.pt"):
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            gone.append(tmp.name)
    return gone


def load(path, map_location="cpu", required=()) -> dict:
    """torch.load with weights_only=True (tensors and plain data only: loading a checkpoint never
    runs code from it). CheckpointError, naming the file, for anything that is not a whole
    eqprop checkpoint holding the `required` keys."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain data, which eqprop does not load "
                "(loading them would run code from the file); eqprop's own checkpoints never do"
            ) from None
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise CheckpointError(
            f"checkpoint {path} is corrupted or truncated and cannot be loaded ({type(err).__name__}: {first}). "
            "Start a new run, or copy an intact checkpoint there."
        ) from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not an eqprop checkpoint of this kind (no {', '.join(missing)}): "
                              "give the run dir of an eqprop training run")
    return state


def append_line(path, line: str) -> None:
    """Append one line and fsync it: earlier lines are never rewritten, so never truncated. Refuses
    a symbolic link at `path` (CheckpointError): the line would land in whatever file it names."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if os.path.islink(path):
            raise CheckpointError(f"{path} is a symbolic link; eqprop appends only to a regular file of the "
                                  "run dir (remove the link)") from None
        raise
    with os.fdopen(fd, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())
