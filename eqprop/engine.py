"""The training loop: epochs of estimator + optimiser steps, metrics, checkpoints, resume, signals.

The engine never branches on the estimator's name: an estimator turns a batch into gradients.
Files written into the run dir:
  metrics.jsonl    one JSON object per epoch (appended, never rewritten)
  checkpoint.pt    latest state, for resume (atomic)
  model.pt         best test accuracy so far;  final_model.pt at the end
  accuracy.png, activity.png
"""
import json
import logging
import math
import signal
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from eqprop import checkpoint as ckpt
from eqprop.config import ConfigError, RunConfig
from eqprop.data import Batches, epoch_seed
from eqprop.dynamics import Dynamics, set_tf32
from eqprop.estimators import build_estimator
from eqprop.losses import build_loss
from eqprop.models import build_model
from eqprop.models.dropout import dropout_masks
from eqprop.optim import build_optimizer
from eqprop.plots import plot_accuracy, plot_activity, run_title
from eqprop.tasks import build_task

log = logging.getLogger(__name__)

# What a checkpoint must hold to be resumed from / evaluated (checkpoint.load refuses anything else).
CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "batch", "history", "best_test_acc", "architecture")
MODEL_KEYS = ("model", "architecture", "epoch")


class Diverged(RuntimeError):
    exit_code = 3


class Interrupted(RuntimeError):
    def __init__(self, signum: int, where: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")
        self.signum = signum
        self.exit_code = 128 + signum


PLOT_EVERY_S = 30.0  # seconds between redraws of accuracy.png / activity.png (and after the last epoch)

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).isdigit():  # the original --device 0
        name = f"cuda:{name}"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:<index>") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} was asked for but no CUDA GPU is available here; use device=cpu "
                              "(or device=auto to take a GPU when there is one)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name}: only {torch.cuda.device_count()} GPU(s) here")
    return dev


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


class Run:
    """Everything one job needs, built from the config (data loaded, model initialised)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, device: torch.device, data=True):
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), device
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        torch.manual_seed(cfg.seed)
        self.loss = build_loss(cfg.loss.name, cfg.loss.softmax_readout)
        self.model = build_model(cfg.model, self.loss, cfg.task.in_channels, cfg.task.in_size)
        self.model.to(device=device, dtype=self.dtype)
        e = cfg.estimator
        self.estimator = build_estimator(e.name, e.beta, e.points, e.third_phase, e.random_sign)
        d = cfg.dynamics
        self.dyn = d  # graph is ignored off CUDA by relax itself
        if device.type == "cuda":
            set_tf32(d.tf32)  # explicit either way: this torch's cuDNN default is TF32 on
        self.optimizer, self.scheduler = build_optimizer(cfg.optimizer, self.model)
        if hasattr(self.estimator, "bind_optimizer"):  # an estimator that moves the weights itself (cep)
            self.estimator.bind_optimizer(self.optimizer)
        if data:
            train, test = build_task(cfg.task)
            self.train = Batches(train, cfg.task.batch_size, cfg.task.num_workers, device, self.dtype)
            self.test = Batches(test, cfg.task.test_batch_size, cfg.task.num_workers, device, self.dtype)


@torch.no_grad()
def evaluate(model, batches: Batches, dyn: Dynamics):
    """Accuracy and mean loss at the free equilibrium reached in T1 steps."""
    from eqprop.estimators.base import free_phase

    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for _, x, y in batches.iterate():
        state = free_phase(model, x, dyn).state
        out = model.output(state)
        correct += (out.argmax(1) == y).sum().item()
        loss_sum += model.loss.cost(out, y).sum().item()
        total += y.numel()
    return correct / max(total, 1), loss_sum / max(total, 1)


class SignalFlag:
    """SIGTERM / SIGINT / SIGUSR1 ask for a checkpoint at the next batch boundary. A second SIGINT
    (Ctrl-C twice) stops at once, keeping the last checkpoint; repeated SIGTERMs do not, because
    SLURM may deliver one per process of the job step and the checkpoint must still be written."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self, run_dir=None):
        self.signum = None
        self.run_dir = run_dir
        self._old = {}

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise Interrupted(signum, f"at once (Ctrl-C twice): work since the last checkpoint in {self.run_dir} "
                              "is lost; rerun with resume=<run dir> to continue from it")
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _non_finite(est, model, loss) -> list:
    """What holds a NaN or an Inf after this batch's update; one device sync for all the checks."""
    groups = {"the free-phase states": list(est.free), "the gradient estimates": list(est.grads.values()),
              "the weights after the update": list(model.parameters()), "the training loss": [loss]}
    flat = [t.detach() if t.numel() else t.new_zeros(1) for ts in groups.values() for t in ts]
    if flat[0].is_cuda:
        # a tensor's largest |value| is NaN or Inf exactly when it holds one: one fused kernel
        ok = torch.isfinite(torch.stack(torch._foreach_norm(flat, float("inf")))).tolist()
    else:
        # min and max propagate NaN and reach +-Inf; on CPU the inf-norm kernel is slow (mnist5k MLP:
        # 1.7 ms per batch, ~20 % of a training step, against 0.22 ms for aminmax)
        peaks = torch.stack([m for t in flat for m in torch.aminmax(t)])
        ok = torch.isfinite(peaks).view(-1, 2).all(1).tolist()
    bad, i = [], 0
    for name, ts in groups.items():
        if not all(ok[i:i + len(ts)]):
            bad.append(name)
        i += len(ts)
    return bad


def _reconcile_metrics(path: Path, history: list) -> None:
    """The epoch's line is appended after its checkpoint is saved, so a kill in between leaves
    metrics.jsonl one epoch behind the checkpoint: append what the file lacks, never rewrite it."""
    have = set()
    if path.exists():
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # a line cut by a crash: close it so the next one is whole
            with open(path, "a") as f:
                f.write("\n")
        for line in raw.decode(errors="replace").splitlines():
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if isinstance(m, dict) and m.get("status", "ok") == "ok":
                have.add(m.get("epoch"))
    for m in history:
        if m["epoch"] not in have:
            ckpt.append_line(path, json.dumps(m))


def _resume_optimizer(run: Run, state: dict) -> None:
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


def train(run: Run, logger) -> dict:
    cfg, model, run_dir = run.cfg, run.model, run.run_dir
    paths = {k: run_dir / f"{k}" for k in ("metrics.jsonl", "checkpoint.pt", "model.pt", "final_model.pt")}
    history, best, start_epoch, start_batch, partial = [], -1.0, 0, 0, None
    ckpt.remove_stale_temps(run_dir)
    if paths["checkpoint.pt"].exists():
        # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device
        state = ckpt.load(paths["checkpoint.pt"], required=CHECKPOINT_KEYS)
        check_same_architecture(state["architecture"], cfg, run_dir)
        model.load_state_dict(state["model"])
        _resume_optimizer(run, state)
        history, best = state["history"], state["best_test_acc"]
        start_epoch, start_batch, partial = state["epoch"], state["batch"], state.get("partial")
        _reconcile_metrics(paths["metrics.jsonl"], history)
        log.info("resuming %s at epoch %d%s", run_dir, start_epoch + 1,
                 f", batch {start_batch + 1}" if start_batch else "")

    def save_checkpoint(epoch, batch, partial_state):
        ckpt.save_atomic({
            "model": model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "epoch": epoch, "batch": batch, "partial": partial_state, "history": history,
            "best_test_acc": best, "architecture": architecture(cfg), "torch_rng": torch.get_rng_state(),
            "cuda_rng": _cuda_rng(), "optimizer_config": asdict(cfg.optimizer),
        }, paths["checkpoint.pt"])

    def save_model(path, epoch, test_acc):
        ckpt.save_atomic({"model": model.state_dict(), "architecture": architecture(cfg), "epoch": epoch,
                          "test_acc": test_acc}, path)

    n_train = len(run.train.dataset)
    last_plot = -math.inf
    with SignalFlag(run_dir) as flag:
        for epoch in range(start_epoch, cfg.epochs):
            order = torch.randperm(n_train, generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch)))
            gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 1))
            torch.manual_seed(epoch_seed(cfg.seed, epoch, 2))  # dropout, whatever draws from torch's global RNG
            acc = {"correct": 0, "total": 0, "loss": 0.0, "steps_free": 0, "steps_nudged": 0, "batches": 0,
                   "seconds": 0.0}
            b0 = 0
            if partial is not None and epoch == start_epoch and start_batch:
                acc, b0 = partial["acc"], start_batch
                gen.set_state(partial["gen"])
                torch.set_rng_state(partial["torch_rng"])
                cuda_rng = partial.get("cuda_rng") or []
                if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
                    torch.cuda.set_rng_state_all(cuda_rng)
            partial = None
            model.train()
            t0 = time.perf_counter()
            batches = run.train.iterate(order, b0, epoch_seed(cfg.seed, epoch, 3))
            bar = tqdm(batches, total=len(run.train), initial=b0,
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=1.0, dynamic_ncols=True)
            last_state = None
            for b, x, y in bar:
                with dropout_masks(model, cfg.model.dropouts or [], x.shape[0]):
                    est = run.estimator(model, x, y, run.dyn, gen)
                if not est.applied:
                    for p in model.parameters():
                        p.grad = est.grads[p]
                    run.optimizer.step()
                with torch.no_grad():
                    out = model.output(est.free)
                    loss = model.loss.cost(out, y).sum()
                    correct = (out.argmax(1) == y).sum()
                    bad = _non_finite(est, model, loss)
                if bad:
                    _diverged(run, epoch, b + 1, paths["metrics.jsonl"], bad)
                acc["correct"] += correct.item()
                acc["total"] += y.numel()
                acc["loss"] += loss.item()
                acc["steps_free"] += est.steps.get("free", 0)
                acc["steps_nudged"] += est.steps.get("nudged", 0)
                acc["batches"] += 1
                last_state = est.free
                if cfg.gdu.every and (b + 1) % cfg.gdu.every == 0:
                    _periodic_gdu(run, logger, x, y, epoch, b)
                bar.set_postfix(acc=f"{acc['correct'] / acc['total']:.3f}", refresh=False)
                if flag.signum is not None:
                    acc["seconds"] += time.perf_counter() - t0
                    save_checkpoint(epoch, b + 1, {"acc": acc, "gen": gen.get_state(),
                                                   "torch_rng": torch.get_rng_state(), "cuda_rng": _cuda_rng()})
                    bar.close()
                    raise Interrupted(flag.signum, f"at epoch {epoch + 1}, batch {b + 1}; checkpoint saved in "
                                      f"{run_dir}. Rerun the same command with resume={run_dir} to continue.")
            bar.close()
            if run.scheduler is not None and epoch < run.scheduler.T_max:
                run.scheduler.step()
            train_seconds = acc["seconds"] + time.perf_counter() - t0
            test_acc, test_loss = evaluate(model, run.test, run.dyn)
            if not math.isfinite(test_loss):
                _diverged(run, epoch, len(run.train), paths["metrics.jsonl"], ["the test loss"])
            nb = max(acc["batches"], 1)
            metrics = {
                "epoch": epoch + 1, "train_acc": acc["correct"] / max(acc["total"], 1),
                "train_loss": acc["loss"] / max(acc["total"], 1), "test_acc": test_acc, "test_loss": test_loss,
                "seconds": train_seconds, "lrs": [g["lr"] for g in run.optimizer.param_groups],
                "steps_free": acc["steps_free"] / nb, "steps_nudged": acc["steps_nudged"] / nb, "status": "ok",
            }
            if model.asymmetric:
                metrics["angles"] = model.angles()
            history.append(metrics)
            # model.pt, then the checkpoint, then the metrics line: wherever a kill lands, a resume
            # redoes the epoch (the same numbers) or finds it in the checkpoint's history
            if test_acc > best:
                best = test_acc
                save_model(paths["model.pt"], epoch + 1, test_acc)
            save_checkpoint(epoch + 1, 0, None)
            ckpt.append_line(paths["metrics.jsonl"], json.dumps(metrics))
            # the two figures cost ~1 s of matplotlib here, more than a whole mnist5k epoch: redrawn
            # at most every PLOT_EVERY_S (every epoch of a real CIFAR-10 run) and after the last epoch
            if epoch + 1 == cfg.epochs or time.perf_counter() - last_plot >= PLOT_EVERY_S:
                title = run_title(cfg)
                plot_accuracy(history, run_dir / "accuracy.png", title=title)
                if last_state is not None:
                    plot_activity(last_state, run_dir / "activity.png", title=f"epoch {epoch + 1}, {title}")
                last_plot = time.perf_counter()
            logger.log_epoch(metrics, state=last_state, model=model)
            log.info("epoch %d/%d  train acc %.4f  test acc %.4f  loss %.4f  %.1fs", epoch + 1, cfg.epochs,
                     metrics["train_acc"], test_acc, metrics["train_loss"], train_seconds)
            if flag.signum is not None and epoch + 1 < cfg.epochs:  # arrived during the evaluation
                raise Interrupted(flag.signum, f"at the end of epoch {epoch + 1}; checkpoint saved in {run_dir}. "
                                  f"Rerun the same command with resume={run_dir} to continue.")
    if history:
        save_model(paths["final_model.pt"], history[-1]["epoch"], history[-1]["test_acc"])
    summary = {"best_test_acc": best if history else None,
               "final_test_acc": history[-1]["test_acc"] if history else None, "epochs": len(history)}
    logger.log_summary(summary)
    return summary


def _cuda_rng():
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []


def _diverged(run, epoch, batch, metrics_path, what):
    """Stop without saving anything from this batch on: the last checkpoint stays the last good state."""
    line = {"epoch": epoch + 1, "batch": batch, "status": "diverged", "non_finite": what}
    ckpt.append_line(metrics_path, json.dumps(line))
    raise Diverged(f"training diverged at epoch {epoch + 1}, batch {batch}: NaN or Inf in {' and '.join(what)}. "
                   "Lower the learning rates (optimizer.lr / optimizer.lrs) or beta; the last good checkpoint in "
                   f"{run.run_dir} is kept.")


def _periodic_gdu(run, logger, x, y, epoch, batch):
    """The original --check-thm: the GDU check on a few examples of the current batch."""
    from eqprop.gdu import gdu_check, n_examples

    n = min(n_examples(run.cfg.gdu, periodic=True), x.shape[0])
    # its own random stream: checking must not change the signs a random_sign run draws
    gen = torch.Generator().manual_seed(epoch_seed(run.cfg.seed, epoch, 4) + batch)
    checked = run.estimator.checked_estimate()
    _, _, metrics = gdu_check(run.model, x[:n], y[:n], run.dyn.T1, run.dyn.T2, checked, gen)
    step = epoch * len(run.train) + batch + 1
    ckpt.append_line(run.run_dir / "gdu_train.jsonl", json.dumps({"epoch": epoch + 1, "batch": batch + 1,
                                                                  "metrics": metrics}))
    logger.log_gdu(metrics, step)
