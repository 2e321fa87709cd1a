"""Wires a composed config to the engine: train, evaluate or gducheck, with clear errors and exit codes.

Exit codes: 0 done, 2 bad configuration or input, 3 diverged, 128+signal when stopped by a signal
(after saving a checkpoint).
"""
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Set, Tuple

import torch

from eqprop import checkpoint as ckpt
from eqprop.config import ConfigError, ModelConfig, RunConfig, from_dict, validate
from eqprop.checkpointer import checkpoint_to_resume, load_model
from eqprop.divergence import Diverged
from eqprop.engine import evaluate, train
from eqprop.loggers import build_logger, check_logger_config
from eqprop.run_builder import Run, resolve_device
from eqprop.signals import Interrupted
from eqprop.tasks import check_available

log = logging.getLogger(__name__)


@dataclass
class CommandLine:
    """What launch.py knows of this command: its overrides, the dir where Hydra keeps this command's copy
    of the config (hydra.output_subdir), and the keys the overrides set (computed when a run continues,
    with notes for the log: resume_settings.explicit_prefixes)."""
    overrides: List[str]
    subdir: Optional[str]
    explicit: Callable[[], Tuple[Set[str], List[str]]]


@dataclass
class Continued:
    """A run that this command continues: what the command changed, and what to say about it (logged
    once the command is accepted: a refused command must not touch the run's launch.log)."""
    changes: dict
    notes: List[str]


def _adopt_architecture(cfg: RunConfig, stored: dict, where: Path) -> None:
    """evaluate / gducheck on a saved run: the model comes from the checkpoint, not the command line."""
    try:
        cfg.model = ModelConfig(**stored["model"])
        cfg.loss.name, cfg.loss.softmax_readout = stored["loss"], stored["softmax_readout"]
    except (TypeError, KeyError) as err:
        raise ckpt.CheckpointError(f"{where} describes its model in a way this version of eqprop does not know "
                                   f"({type(err).__name__}: {err})") from None
    validate(cfg)


def _load_weights(cfg: RunConfig):
    state = load_model(cfg.load_path)
    _adopt_architecture(cfg, state["architecture"], Path(cfg.load_path) / "model.pt")
    return state


def _continued_run(cfg_dict: dict, run_dir: Path) -> Optional[Path]:
    """The run dir this training command continues: resume=, or the job's own dir when it already holds
    a checkpoint (a requeued job)."""
    if cfg_dict.get("mode", "train") != "train":
        return None
    d = Path(str(cfg_dict["resume"])) if cfg_dict.get("resume") else run_dir
    return d if (d / "checkpoint.pt").is_file() else None


def continued_settings(cfg_dict: dict, run_dir: Path, command_line: Optional[CommandLine]):
    """A run that continues keeps its own stored settings; only the keys this command line sets change.
    (cfg_dict, None) for a new run, and for a caller that gives no command line (the config is taken
    as it is)."""
    from eqprop.runs import stored_config
    from eqprop.resume_settings import merge

    if command_line is not None and cfg_dict.get("mode") in ("evaluate", "gducheck") and cfg_dict.get("load_path"):
        return _task_of_the_loaded_run(cfg_dict, Path(str(cfg_dict["load_path"])), command_line)
    d = _continued_run(cfg_dict, run_dir)
    if d is None or command_line is None:
        return cfg_dict, None
    try:
        stored = stored_config(d)
    except Exception as err:  # noqa: BLE001 - any unreadable record is bad input here
        raise ConfigError(f"cannot read the settings stored in {d} ({type(err).__name__}: {err}); repair the "
                          "file or start a new run") from None
    if stored is None:  # a run not started by launch.py keeps no settings: the command line's hold
        return cfg_dict, Continued({}, [f"{d} keeps no stored settings (no .hydra/config.yaml): continuing "
                                           "with this command line's settings"])
    explicit, notes = command_line.explicit()
    effective, changes = merge(stored, cfg_dict, explicit)
    return effective, Continued(changes, notes)


def _task_of_the_loaded_run(cfg_dict: dict, where: Path, command_line: CommandLine):
    """evaluate / gducheck measure a run on the task it trained on (its data set, batch sizes and limits),
    as they take its model from model.pt; what the command line sets of task (task=<name>, task.<key>=)
    still holds."""
    from eqprop.resume_settings import merge
    from eqprop.runs import stored_config

    try:
        stored = stored_config(where)
    except Exception:  # noqa: BLE001 - an unreadable record: the command line's task, checked as usual
        return cfg_dict, None
    if not stored or not isinstance(stored.get("task"), dict):
        return cfg_dict, None
    explicit, _ = command_line.explicit()
    explicit = {k for k in explicit if k == "task" or k.startswith("task.")}
    task = merge({"task": stored["task"]}, {"task": cfg_dict.get("task", {})}, explicit)[0]["task"]
    if task == cfg_dict.get("task"):
        return cfg_dict, None
    note = f"task={task.get('name')}: the task {where} trained on (set task= to measure it on another)"
    # the model and loss too, as model.pt will have them (_adopt_architecture): the command line's defaults
    # were resolved for its own task (model.archi's input size) and would be refused against this one
    adopted = {key: stored[key] for key in ("model", "loss") if isinstance(stored.get(key), dict)}
    return {**cfg_dict, **adopted, "task": task}, Continued({}, [note])  # said once the command is accepted


def _record_command(cfg: RunConfig, cfg_dict: dict, cont: Optional[Continued], run_dir: Path,
                    command_line: Optional[CommandLine]) -> None:
    """Say what a continued run changed, and keep the settings a later training command in this run dir
    trains with beside Hydra's copy of its command line (the first command's are Hydra's .hydra/)."""
    from eqprop.resume_settings import describe
    from eqprop.run_record import FIRST, write_resume_record

    changes = cont.changes if cont is not None else {}
    for line in (cont.notes if cont is not None else []) + describe(changes):
        log.warning(line)
    if "epochs" in changes:
        log.info("epochs: %s -> %s", *changes["epochs"])
    if cfg.mode == "train" and command_line is not None and command_line.subdir not in (None, FIRST):
        write_resume_record(run_dir / command_line.subdir, cfg_dict, changes, command_line.overrides)


def prepare(cfg_dict: dict, run_dir: Path):
    """Everything that can fail on bad input, before any compute. Returns the config, the device and the
    one checkpoint this command reads (loaded once here and handed on): the checkpoint.pt a training
    command continues from, the model.pt that evaluate / gducheck load, or None."""
    cfg = from_dict(cfg_dict)
    check_logger_config(cfg.logger)
    device = resolve_device(cfg.device)
    resumed = checkpoint_to_resume(cfg, run_dir)
    weights = _load_weights(cfg) if cfg.load_path is not None else None
    check_available(cfg.task)
    return cfg, device, resumed if cfg.mode == "train" else weights


def run_mode(cfg: RunConfig, device, loaded, run_dir: Path, config_dict: dict,
             continued: Optional[Continued] = None, command_line: Optional[CommandLine] = None) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s: run dir %s", cfg.mode, run_dir)
    _record_command(cfg, config_dict, continued, run_dir, command_line)
    logger = build_logger(cfg.logger, run_dir, config_dict)
    status = "failed"
    try:
        if cfg.mode == "train":
            run = Run(cfg, run_dir, device)
            result = train(run, logger, loaded)
        elif cfg.mode == "evaluate":
            result = _evaluate(cfg, device, loaded, run_dir)
            logger.log_summary(result)
        else:
            result = _gducheck(cfg, device, loaded, run_dir, logger)
        status = "finished"
        return result
    except Diverged:
        status = "diverged"
        raise
    except Interrupted:
        status = "interrupted"
        raise
    finally:
        logger.finish(status)
        log.info("%s %s: run dir %s", cfg.mode, status, run_dir)


def _evaluate(cfg, device, weights, run_dir):
    run = Run(cfg, run_dir, device)
    run.model.load_state_dict(weights["model"])
    train_acc, _ = evaluate(run.model, run.train, run.dyn)
    test_acc, test_loss = evaluate(run.model, run.test, run.dyn)
    line = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "checkpoint": "model.pt", "epoch": weights["epoch"],
            "T1": cfg.dynamics.T1, "batch_size": cfg.task.test_batch_size, "train_acc": train_acc,
            "test_acc": test_acc, "test_loss": test_loss}
    ckpt.append_line(Path(cfg.load_path) / "evaluations.jsonl", json.dumps(line))
    log.info("evaluate %s: train acc %.4f  test acc %.4f", cfg.load_path, train_acc, test_acc)
    return line


def _first_examples(data, n: int):
    """The first n training examples in the dataset's order (across batches if a batch is smaller)."""
    xs, ys, got = [], [], 0
    for _, x, y in data.iterate():
        xs.append(x[: n - got])
        ys.append(y[: n - got])
        got += xs[-1].shape[0]
        if got >= n:
            break
    return torch.cat(xs), torch.cat(ys)


def _gducheck(cfg, device, weights, run_dir, logger):
    from eqprop.gdu import full_check, n_examples
    from eqprop.gdu_plots import plot_bars, plot_gdu

    run = Run(cfg, run_dir, device)
    if weights is not None:
        run.model.load_state_dict(weights["model"])
    x, y = _first_examples(run.train, n_examples(cfg.gdu, periodic=False))
    gen = torch.Generator().manual_seed(cfg.seed)
    out_dir = Path(cfg.load_path) if cfg.load_path else run_dir
    if cfg.gdu.betas:  # the study over beta and all three EP estimates replaces the single check
        from eqprop.gdu_study import run_from_config

        return run_from_config(cfg, run.model, x, y, out_dir, gen, logger)
    check = full_check(run.model, x, y, cfg.dynamics.T1, cfg.dynamics.T2, run.estimator.checked_estimate(), gen)
    result = {"estimator": cfg.estimator.name, "checked": check["checked"], "betas": check["betas"],
              "T1": cfg.dynamics.T1, "T2": cfg.dynamics.T2, "n_examples": int(x.shape[0]),
              "metrics": check["metrics"]}
    if "bars" in check:
        result["bars"] = check["bars"]
    ckpt.write_text_atomic(out_dir / "gdu.json", json.dumps(result, indent=2))
    ckpt.save_atomic({k: check[k] for k in ("bptt", "ep", "checked", "betas")}, out_dir / "gdu_traces.pt")
    title = f"GDU check ({cfg.model.name}, {cfg.loss.name}, T1 {cfg.dynamics.T1}, T2 {cfg.dynamics.T2})"
    plot_gdu(check["bptt"], check["ep"], out_dir / "gdu.png", title=title)
    if "bars" in check:
        plot_bars(check["bars"], out_dir / "bars.png", title=title)
    logger.log_gdu(check["metrics"][check["checked"]], 0)
    for name, metrics in check["metrics"].items():
        for key, m in metrics.items():
            log.info("GDU %-17s %-28s RMSE %.4f  sign error %.4f", name, key, m["rmse"], m["sign_error"])
    for key, r in check.get("bars", {}).items():
        log.info("GDU bars %-28s |symmetric - BPTT| / mean |one-sided - BPTT| = %.4f", key, r)
    return result


# The signal that stopped a job of this process's multirun (basic launcher: jobs run one after another
# in this process). A Ctrl-C or SIGTERM means "stop the sweep", not "skip to the next job".
_stopped_by = None


def _refused(where: str, err: Exception, multirun: bool) -> None:
    """A refused single run says so on stderr only: it must not write into the run dir, and launch.log
    may be an earlier command's log (a refused resume=). A refused job of a multirun has its own dir."""
    if multirun:
        log.error("%serror: %s", where, err)
    else:
        sys.stderr.write(f"[eqprop] {where}error: {err}\n")
        sys.stderr.flush()


def main(cfg_dict: dict, run_dir: Path, multirun: bool = False, command_line: Optional[CommandLine] = None):
    """Entry point from launch.py. In a multirun, errors propagate so that Hydra marks the job failed
    and goes on with the others; in a single run they become a message and an exit code.
    command_line: what launch.py knows of the command (a run that continues keeps its own settings,
    except the keys the command line sets); None takes cfg_dict as it is."""
    global _stopped_by
    where = f"{run_dir}: " if multirun else ""
    try:
        if multirun and _stopped_by is not None:
            raise Interrupted(_stopped_by, "before this job started (an earlier job of the sweep was stopped by it)")
        cfg_dict, continued = continued_settings(cfg_dict, run_dir, command_line)
        cfg, device, loaded = prepare(cfg_dict, run_dir)
        # accepted: from here library warnings land in the run's launch.log too (not before, as a
        # refused command must leave that file as it was)
        logging.captureWarnings(True)
        return run_mode(cfg, device, loaded, run_dir, cfg_dict, continued, command_line)
    except (ConfigError, ckpt.CheckpointError) as err:
        _refused(where, err, multirun)
        if multirun:
            raise
        sys.exit(2)
    except (Diverged, Interrupted) as err:
        log.error("%s%s", where, err)
        if multirun:
            if isinstance(err, Interrupted):
                _stopped_by = err.signum
            raise
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        # Ctrl-C outside the training loop (start-up, evaluation): no training progress to save
        log.error("%sstopped by SIGINT (Ctrl-C) outside training; nothing to save", where)
        if multirun:
            raise
        sys.exit(128 + 2)
