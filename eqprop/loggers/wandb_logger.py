"""Weights & Biases logger (`logger=wandb`), built so that W&B can never stop or stall a training run.

- Online when credentials are configured, offline otherwise (logger.mode=auto); an online init that
  cannot reach the server within logger.init_timeout falls back to offline, and an offline init that
  fails leaves the run logging to its files only. Every W&B error after init becomes one warning.
- The run id lives in <run dir>/wandb_run_id, so a requeued (or `resume=`d) job continues the
  same W&B run; W&B's own files go to <run dir>/wandb/. Offline, each segment is a separate
  offline-run-* folder with that id; the last step is kept in <run dir>/wandb_step so that the
  segments log disjoint W&B steps and sync one after the other without overwriting.
- group = task-model-loss and job_type = estimator (conf/logger/wandb.yaml): a dashboard grouped by
  both shows one curve per estimator with the seeds collapsed into mean and spread.
"""
import dataclasses
import logging
import netrc
import os
import secrets
import string
from pathlib import Path

from eqprop.errors import ConfigError
from eqprop.runs import family, write_text_atomic

log = logging.getLogger(__name__)

ID_FILE = "wandb_run_id"
STEP_FILE = "wandb_step"     # the last W&B step logged, so that a requeued segment continues after it
MODES = ("auto", "online", "offline", "disabled")
# finish(status) -> the exit code W&B stores; any non-zero code shows the run as failed
EXIT_CODES = {"finished": 0, "failed": 1, "diverged": 3, "interrupted": 143}


def check_config(cfg) -> dict:
    """The values W&B needs (keys and types are checked by the schema, eqprop.config.LoggerConfig)."""
    out = dataclasses.asdict(cfg)
    if out["mode"] not in MODES:
        raise ConfigError(f"logger.mode={out['mode']!r} is not known; expected one of {', '.join(MODES)}")
    if not all(out["tags"]):
        raise ConfigError(f"logger.tags={out['tags']!r} must be a list of non-empty strings, "
                          "e.g. logger.tags=[baseline,v2]")
    for key in ("init_timeout", "finish_timeout"):
        v = out[key]
        if v < 0 or (key == "init_timeout" and v == 0):
            raise ConfigError(f"logger.{key}={v:g} must be a number of seconds "
                              f"{'> 0' if key == 'init_timeout' else '>= 0 (0 = no limit)'}")
    if not out["project"]:
        raise ConfigError("logger.project must name a W&B project, e.g. logger.project=eqprop")
    return out


def has_credentials() -> bool:
    """Is a W&B login configured? Read locally (env, .netrc): asking the server could hang."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0].split(":")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    env = {"dryrun": "offline", "run": "online"}.get(env, env)
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if has_credentials() else "offline"


def _warn(msg: str) -> None:
    log.warning("warning: %s", msg)


class WandbLogger:
    def __init__(self, logger_cfg, run_dir: Path, config: dict):
        self.cfg = check_config(logger_cfg)
        self.run_dir = Path(run_dir)
        self.config = config
        self.mode = resolve_mode(self.cfg["mode"])
        self.run = None
        if self.mode == "disabled":
            return
        try:
            import wandb
        except ImportError as err:
            _warn(f"logger=wandb but wandb cannot be imported ({err}); this run logs to its files only")
            return
        self.wandb = wandb
        self._train = config.get("mode", "train") == "train"
        self.run = self._init()
        if self.run is not None:
            self._step = max(self._saved_step() + 1, int(self.run.step or 0))
            self._safely("define_metric", self._define_metrics)

    # --- init -------------------------------------------------------------------------------
    def _run_id(self, train: bool) -> str:
        """Training runs keep their id in the run dir (requeue = same W&B run); evaluate and
        gducheck write into a training run's dir and get a new W&B run each time."""
        f = self.run_dir / ID_FILE
        if train and f.exists() and f.read_text().strip():
            return f.read_text().strip()
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        if train:
            write_text_atomic(f, run_id + "\n")
        return run_id

    def _init_kwargs(self) -> dict:
        c, d = self.cfg, self.config
        est = (d.get("estimator") or {}).get("name", "?")
        mode = d.get("mode", "train")
        names = [(d.get(k) or {}).get("name") for k in ("task", "model", "loss")]
        group = c["group"] or "-".join(str(n) for n in names)
        job_type = c["job_type"] or est
        if mode != "train":  # keep checks out of the training curves of the same group
            job_type = f"{mode}-{job_type}"
        auto_tags = [est, family(est)] + names + ([mode] if mode != "train" else [])
        tags = list(dict.fromkeys(t for t in c["tags"] + auto_tags if t))
        config = dict(d, eqprop={"family": family(est), "run_dir": str(self.run_dir.resolve())})
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return dict(project=c["project"], entity=c["entity"], group=group, job_type=job_type,
                    name=c["run_name"], notes=c["notes"], tags=tags, config=config, dir=str(self.run_dir),
                    id=self._run_id(mode == "train"), resume="allow", reinit="finish_previous")

    def _init(self):
        wandb = self.wandb
        kwargs = self._init_kwargs()
        settings = wandb.Settings(init_timeout=float(self.cfg["init_timeout"]),
                                  finish_timeout=float(self.cfg["finish_timeout"]))
        modes = ["online", "offline"] if self.mode == "online" else ["offline"]
        for mode in modes:
            try:
                return wandb.init(mode=mode, settings=settings, **kwargs)
            except Exception as err:  # noqa: BLE001 - W&B must never stop a training run
                first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
                if mode == "online":
                    # the half-started online run holds the id in this process; the offline retry needs it
                    try:
                        wandb.teardown()
                    except Exception:  # noqa: BLE001
                        pass
                    _warn(f"W&B is unreachable ({first}); logging offline instead, sync later with "
                          f"`wandb sync {self.run_dir}/wandb/offline-run-*`")
                else:
                    _warn(f"W&B could not start ({first}); this run logs to its files only")
        return None

    def _define_metrics(self):
        r = self.run
        r.define_metric("epoch")
        for prefix in ("train", "test", "lr", "time", "steps", "angle", "activity"):
            r.define_metric(f"{prefix}/*", step_metric="epoch")
        r.define_metric("test/acc", summary="max,last")
        r.define_metric("gdu_step")
        for prefix in ("gdu_rmse", "gdu_sign_error"):
            r.define_metric(f"{prefix}/*", step_metric="gdu_step")

    # --- logging ----------------------------------------------------------------------------
    def _saved_step(self) -> int:
        try:
            return int((self.run_dir / STEP_FILE).read_text()) if self._train else -1
        except (OSError, ValueError):
            return -1

    def _log(self, row: dict) -> None:
        self.run.log(row, step=self._step)
        if self._train:
            write_text_atomic(self.run_dir / STEP_FILE, str(self._step))
        self._step += 1

    def _safely(self, what, fn):
        """A W&B failure mid-run costs the W&B side only, once, with a warning."""
        if self.run is None:
            return
        try:
            fn()
        except Exception as err:  # noqa: BLE001
            _warn(f"W&B {what} failed ({type(err).__name__}: {err}); W&B logging stops here, "
                  "the run's own files are complete")
            run, self.run = self.run, None
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001
                pass

    def log_epoch(self, metrics: dict, state=None, model=None) -> None:
        def log():
            row = {"epoch": metrics["epoch"],
                   "train/acc": metrics["train_acc"], "train/loss": metrics["train_loss"],
                   "test/acc": metrics["test_acc"], "test/loss": metrics["test_loss"],
                   "time/epoch_seconds": metrics["seconds"],
                   "steps/free": metrics["steps_free"], "steps/nudged": metrics["steps_nudged"]}
            row.update({f"lr/layer_{i}": lr for i, lr in enumerate(metrics.get("lrs", []))})
            # angles()[k] is between forward synapse k+1 and its backward twin
            row.update({f"angle/synapse_{k + 1}": a for k, a in enumerate(metrics.get("angles") or [])})
            if self.cfg["histograms"] and state is not None:
                row.update({f"activity/layer_{k + 1}": self.wandb.Histogram(s.detach().float().flatten().cpu().numpy())
                            for k, s in enumerate(state)})
            self._log(row)

        self._safely("log", log)

    def log_gdu(self, metrics: dict, step: int) -> None:
        def log():
            row = {"gdu_step": step}
            for key, m in metrics.items():
                row[f"gdu_rmse/{key}"] = m["rmse"]
                row[f"gdu_sign_error/{key}"] = m["sign_error"]
            self._log(row)

        self._safely("log", log)

    def log_summary(self, summary: dict) -> None:
        def log():
            for k, v in summary.items():
                self.run.summary[k] = v

        self._safely("summary", log)

    def finish(self, status: str) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            run.summary["status"] = status
            if status == "interrupted":  # the UI shows "preempted", not "crashed", until the requeue resumes it
                run.mark_preempting()
            run.finish(exit_code=EXIT_CODES.get(status, 1))
        except Exception as err:  # noqa: BLE001
            _warn(f"W&B finish failed ({type(err).__name__}: {err}); sync later with "
                  f"`wandb sync {self.run_dir}/wandb/offline-run-*` if the run was offline")
