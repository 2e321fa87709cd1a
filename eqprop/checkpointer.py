"""A run's checkpoints: what they hold, which one a command continues from (loaded and checked once,
then handed on), resuming from it, and saving them in an order that survives a kill anywhere.

Files of the run dir written here:
  checkpoint.pt    latest state, for resume (atomic)
  model.pt         best test accuracy so far;  final_model.pt at the end
  metrics.jsonl    one JSON object per epoch (appended, never rewritten)
"""
import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from eqprop import checkpoint as ckpt
from eqprop.config import RunConfig
from eqprop.errors import ConfigError
from eqprop.runs import reconcile_metrics

log = logging.getLogger(__name__)

# What a checkpoint must hold to be resumed from / evaluated (checkpoint.load refuses anything else).
CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "batch", "history", "best_test_acc", "architecture")
MODEL_KEYS = ("model", "architecture", "epoch")


def architecture(cfg: RunConfig) -> dict:
    """What a checkpoint's weights depend on; resuming with anything else is refused."""
    t = cfg.task
    return {"model": asdict(cfg.model), "softmax_readout": cfg.loss.softmax_readout, "loss": cfg.loss.name,
            "input": [t.in_channels, t.in_size, t.in_size], "num_classes": t.num_classes}


def check_same_architecture(stored: dict, cfg: RunConfig, where: Path):
    now = architecture(cfg)
    diffs = []
    for key in now:
        a, b = stored.get(key), now[key]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now"
                      for k in b if a.get(k) != b.get(k) and k not in ("dropouts",)]
        elif a != b:
            diffs.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    if diffs:
        raise ConfigError(f"cannot resume {where}: it holds a run of a different architecture ("
                          + "; ".join(diffs) + "). Resume with the same model/loss/task, or start a new run.")


def checkpoint_to_resume(cfg: RunConfig, run_dir: Path) -> Optional[dict]:
    """The checkpoint this training command continues from, loaded (on the CPU: RNG states must stay
    CPU tensors) and checked against the config's architecture: resume=<run dir>, or the job's own
    dir when it already holds one (a requeued job lands there again). None for a new run."""
    if cfg.resume is not None:
        where = Path(cfg.resume)
        if not where.is_dir():
            raise ConfigError(f"resume={cfg.resume}: no such run dir")
        if not (where / "checkpoint.pt").exists():
            raise ConfigError(f"resume={cfg.resume}: no checkpoint.pt there, so no run to resume; check the path "
                              "(a run writes its checkpoint after its first epoch, or when stopped by a signal)")
    elif cfg.mode == "train" and (run_dir / "checkpoint.pt").exists():
        where = run_dir
    else:
        return None
    state = ckpt.load(where / "checkpoint.pt", required=CHECKPOINT_KEYS)
    check_same_architecture(state["architecture"], cfg, where)
    return state


def load_model(load_path: str) -> dict:
    """model.pt of the run that mode=evaluate / gducheck loads (load_path=<run dir>)."""
    path = Path(load_path)
    if not path.is_dir():
        raise ConfigError(f"load_path={load_path} is not a directory; give a training run's output dir")
    if not (path / "model.pt").exists():
        raise ConfigError(f"load_path={load_path} has no model.pt checkpoint: train there first "
                          "(mode=train writes model.pt after its first epoch)")
    return ckpt.load(path / "model.pt", required=MODEL_KEYS)


@dataclass
class Progress:
    """Where training stands: what a checkpoint keeps beside the weights and the optimiser."""
    history: list = field(default_factory=list)  # one metrics dict per epoch done
    best_test_acc: float = -1.0
    epoch: int = 0                  # epochs done
    batch: int = 0                  # batches done of the next epoch (a checkpoint saved on a signal)
    partial: Optional[dict] = None  # that epoch's running sums and RNG states (mid_epoch_state)


def cuda_rng() -> list:
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []


def mid_epoch_state(sums: dict, gen: torch.Generator) -> dict:
    """An epoch stopped at a batch boundary: its running sums and every random stream it draws from."""
    return {"acc": sums, "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng()}


def restore_mid_epoch(partial: dict, gen: torch.Generator) -> dict:
    """The random streams as a mid_epoch_state left them; returns the epoch's running sums."""
    gen.set_state(partial["gen"])
    torch.set_rng_state(partial["torch_rng"])
    cuda = partial.get("cuda_rng") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return partial["acc"]


def resume_optimizer(run, state: dict) -> None:
    """The checkpoint's optimiser and schedule, exactly; but when the command line changes the
    optimiser's settings (a lower lr after a divergence, say), those apply from here on: the same
    momentum / Adam buffers, the new hyper-parameters, the new schedule at the epoch reached."""
    saved, now = state.get("optimizer_config"), asdict(run.cfg.optimizer)
    if saved is None or saved == now:
        run.optimizer.load_state_dict(state["optimizer"])
        if run.scheduler is not None and state.get("scheduler"):
            run.scheduler.load_state_dict(state["scheduler"])
        return
    changed = ", ".join(f"optimizer.{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v)
    if saved.get("name") == now["name"]:
        groups = run.optimizer.state_dict()["param_groups"]  # as built from the command line
        run.optimizer.load_state_dict({"state": state["optimizer"]["state"], "param_groups": groups})
    if run.scheduler is not None:
        with warnings.catch_warnings():  # stepping before any optimiser step is the point here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(min(state["epoch"], run.scheduler.T_max)):
                run.scheduler.step()
    log.info("resuming with new optimiser settings (%s)", changed)


class Checkpointer:
    """Saves one run's checkpoints into its run dir, and resumes the run from a loaded one."""

    def __init__(self, run):
        self.run = run
        self.dir = run.run_dir
        self.metrics = self.dir / "metrics.jsonl"

    def resume(self, state: Optional[dict]) -> Progress:
        """The run's progress: none for a new run; else the weights, optimiser and history of `state`
        (checkpoint_to_resume's), with metrics.jsonl brought level with them."""
        ckpt.remove_stale_temps(self.dir)
        if state is None:
            return Progress()
        self.run.model.load_state_dict(state["model"])
        resume_optimizer(self.run, state)
        progress = Progress(state["history"], state["best_test_acc"], state["epoch"], state["batch"],
                            state.get("partial"))
        reconcile_metrics(self.metrics, progress.history)
        log.info("resuming %s at epoch %d%s", self.dir, progress.epoch + 1,
                 f", batch {progress.batch + 1}" if progress.batch else "")
        return progress

    def save(self, progress: Progress, epoch: int, batch: int = 0, partial: Optional[dict] = None) -> None:
        """checkpoint.pt: `epoch` epochs and `batch` batches of the next one done (partial: its state)."""
        run = self.run
        ckpt.save_atomic({
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "epoch": epoch, "batch": batch, "partial": partial, "history": progress.history,
            "best_test_acc": progress.best_test_acc, "architecture": architecture(run.cfg),
            "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng(), "optimizer_config": asdict(run.cfg.optimizer),
        }, self.dir / "checkpoint.pt")

    def save_model(self, name: str, epoch: int, test_acc: float) -> None:
        ckpt.save_atomic({"model": self.run.model.state_dict(), "architecture": architecture(self.run.cfg),
                          "epoch": epoch, "test_acc": test_acc}, self.dir / name)

    def record_epoch(self, progress: Progress, metrics: dict) -> None:
        """An epoch done: model.pt (if best), then the checkpoint, then the metrics line. Wherever a kill
        lands, a resume redoes the epoch (the same numbers) or finds it in the checkpoint's history."""
        progress.history.append(metrics)
        progress.epoch, progress.batch, progress.partial = metrics["epoch"], 0, None
        if metrics["test_acc"] > progress.best_test_acc:
            progress.best_test_acc = metrics["test_acc"]
            self.save_model("model.pt", metrics["epoch"], metrics["test_acc"])
        self.save(progress, metrics["epoch"])
        ckpt.append_line(self.metrics, json.dumps(metrics))
