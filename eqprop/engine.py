"""The training recipe: epochs of estimator + optimiser steps, an evaluation, a checkpoint and a
metrics line per epoch, figures. The engine never branches on the estimator's name: an estimator
turns a batch into gradients (or, like cep, moves the weights itself and says so).

The pieces: run_builder (the Run: data, model, estimator, optimiser), checkpointer (checkpoints,
resume, metrics.jsonl), signals (a clean stop), divergence (NaN / Inf). Figures written into the
run dir: accuracy.png, activity.png.
"""
import json
import logging
import math
import time
from typing import Optional

import torch
from tqdm import tqdm

from eqprop import checkpoint as ckpt
from eqprop.checkpointer import Checkpointer, Progress, mid_epoch_state, restore_mid_epoch
from eqprop.data import Batches, epoch_seed
from eqprop.divergence import non_finite, stop_diverged
from eqprop.dynamics import Dynamics
from eqprop.estimators.base import free_phase
from eqprop.models.dropout import dropout_masks
from eqprop.plots import plot_accuracy, plot_activity, run_title
from eqprop.run_builder import Run
from eqprop.signals import Interrupted, SignalFlag

log = logging.getLogger(__name__)

PLOT_EVERY_S = 30.0  # seconds between redraws of accuracy.png / activity.png (and after the last epoch)


def train(run: Run, logger, state: Optional[dict] = None) -> dict:
    """Train `run` from its first epoch, or from `state` (the checkpoint the app loaded and checked)."""
    cfg = run.cfg
    saver = Checkpointer(run)
    progress = saver.resume(state)
    last_plot = -math.inf
    with SignalFlag(run.run_dir) as flag:
        for epoch in range(progress.epoch, cfg.epochs):
            sums, last_state = train_epoch(run, logger, saver, progress, epoch, flag)
            metrics = epoch_metrics(run, epoch, sums)
            saver.record_epoch(progress, metrics)
            # the two figures cost ~1 s of matplotlib here, more than a whole mnist5k epoch: redrawn
            # at most every PLOT_EVERY_S (every epoch of a real CIFAR-10 run) and after the last epoch
            if epoch + 1 == cfg.epochs or time.perf_counter() - last_plot >= PLOT_EVERY_S:
                _draw_figures(run, progress.history, last_state)
                last_plot = time.perf_counter()
            logger.log_epoch(metrics, state=last_state, model=run.model)
            log.info("epoch %d/%d  train acc %.4f  test acc %.4f  loss %.4f  %.1fs", epoch + 1, cfg.epochs,
                     metrics["train_acc"], metrics["test_acc"], metrics["train_loss"], metrics["seconds"])
            if flag.signum is not None and epoch + 1 < cfg.epochs:  # arrived during the evaluation
                raise Interrupted(flag.signum, f"at the end of epoch {epoch + 1}; checkpoint saved in "
                                  f"{run.run_dir}. Rerun the same command with resume={run.run_dir} to continue.")
    history = progress.history
    if history:
        saver.save_model("final_model.pt", history[-1]["epoch"], history[-1]["test_acc"])
    summary = {"best_test_acc": progress.best_test_acc if history else None,
               "final_test_acc": history[-1]["test_acc"] if history else None, "epochs": len(history)}
    logger.log_summary(summary)
    return summary


def train_epoch(run: Run, logger, saver: Checkpointer, progress: Progress, epoch: int, flag: SignalFlag):
    """One pass over the training set, from the batch a mid-epoch checkpoint reached. Returns the
    epoch's running sums and the last batch's free state. On a signal: checkpoint, then Interrupted."""
    cfg, model = run.cfg, run.model
    seed = epoch_seed(cfg.seed, epoch)
    order = torch.randperm(len(run.train.dataset), generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 1))
    torch.manual_seed(epoch_seed(cfg.seed, epoch, 2))  # dropout, whatever draws from torch's global RNG
    sums = {"correct": 0, "total": 0, "loss": 0.0, "steps_free": 0, "steps_nudged": 0, "batches": 0, "seconds": 0.0}
    b0 = 0
    if progress.partial is not None and progress.batch:
        sums, b0 = restore_mid_epoch(progress.partial, gen), progress.batch
    progress.partial = None
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(run.train.iterate(order, b0, epoch_seed(cfg.seed, epoch, 3)), total=len(run.train), initial=b0,
               desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, mininterval=1.0, dynamic_ncols=True)
    last_state = None
    for b, x, y in bar:
        est = train_step(run, x, y, gen)
        with torch.no_grad():
            out = model.output(est.free)
            loss = model.loss.cost(out, y).sum()
            correct = (out.argmax(1) == y).sum()
            bad = non_finite(est, model, loss)
        if bad:
            stop_diverged(run.run_dir, epoch, b + 1, bad)
        sums["correct"] += correct.item()
        sums["total"] += y.numel()
        sums["loss"] += loss.item()
        sums["steps_free"] += est.steps.get("free", 0)
        sums["steps_nudged"] += est.steps.get("nudged", 0)
        sums["batches"] += 1
        last_state = est.free
        if cfg.gdu.every and (b + 1) % cfg.gdu.every == 0:
            _periodic_gdu(run, logger, x, y, epoch, b)
        bar.set_postfix(acc=f"{sums['correct'] / sums['total']:.3f}", refresh=False)
        if flag.signum is not None:
            sums["seconds"] += time.perf_counter() - t0
            saver.save(progress, epoch, b + 1, mid_epoch_state(sums, gen))
            bar.close()
            raise Interrupted(flag.signum, f"at epoch {epoch + 1}, batch {b + 1}; checkpoint saved in "
                              f"{run.run_dir}. Rerun the same command with resume={run.run_dir} to continue.")
    bar.close()
    if run.scheduler is not None and epoch < run.scheduler.T_max:
        run.scheduler.step()
    sums["seconds"] += time.perf_counter() - t0
    return sums, last_state


def train_step(run: Run, x, y, gen: torch.Generator):
    """The estimator's gradients for one batch, then one optimiser step; none when the estimator has
    already moved the weights itself (Estimate.applied: cep steps the optimiser at every nudged step)."""
    with dropout_masks(run.model, run.cfg.model.dropouts or [], x.shape[0]):
        est = run.estimator(run.model, x, y, run.dyn, gen)
    if not est.applied:
        for p in run.model.parameters():
            p.grad = est.grads[p]
        run.optimizer.step()
    return est


def epoch_metrics(run: Run, epoch: int, sums: dict) -> dict:
    """The epoch's line of metrics.jsonl: its training sums and a test-set evaluation."""
    test_acc, test_loss = evaluate(run.model, run.test, run.dyn)
    if not math.isfinite(test_loss):
        stop_diverged(run.run_dir, epoch, len(run.train), ["the test loss"])
    nb, n = max(sums["batches"], 1), max(sums["total"], 1)
    metrics = {
        "epoch": epoch + 1, "train_acc": sums["correct"] / n, "train_loss": sums["loss"] / n,
        "test_acc": test_acc, "test_loss": test_loss, "seconds": sums["seconds"],
        "lrs": [g["lr"] for g in run.optimizer.param_groups],
        "steps_free": sums["steps_free"] / nb, "steps_nudged": sums["steps_nudged"] / nb, "status": "ok",
    }
    if run.model.asymmetric:
        metrics["angles"] = run.model.angles()
    return metrics


@torch.no_grad()
def evaluate(model, batches: Batches, dyn: Dynamics):
    """Accuracy and mean loss at the free equilibrium reached in T1 steps."""
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


def _draw_figures(run: Run, history: list, last_state) -> None:
    title = run_title(run.cfg)
    plot_accuracy(history, run.run_dir / "accuracy.png", title=title)
    if last_state is not None:
        plot_activity(last_state, run.run_dir / "activity.png", title=f"epoch {history[-1]['epoch']}, {title}")


def _periodic_gdu(run: Run, logger, x, y, epoch: int, batch: int) -> None:
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
