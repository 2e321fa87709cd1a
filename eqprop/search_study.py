"""The Optuna study behind a search: its storage, resuming it, each trial's outcome, optimization_results.yaml.

One driver (the `python launch.py -m +search=...` process) asks and tells every trial; the jobs never
touch the study, so an SQLite file is enough, also on a shared file system. Each trial runs as job
<trial number> of the sweep dir, and its user attrs record that dir, the overrides and how it ended.
"""
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, Trial, TrialState

from eqprop.runs import job_outcome, status_of, write_text_atomic
from eqprop.search_space import SearchConfigError, SearchSpace, describe

log = logging.getLogger(__name__)

OBJECTIVES = ("best_test_acc", "final_test_acc")  # keys of a training job's result (and of its metrics.jsonl)
SAMPLERS = ("tpe", "random")
RESULTS = "optimization_results.yaml"
DB_FILE = "optuna.db"
# a job outcome that is the trial's own (it counts); anything else, the trial is run again
FAILED_OUTCOMES = ("diverged", "failed", "config error", "killed")


def check_settings(n_trials, n_jobs, objective, sampler, n_startup_trials) -> None:
    def positive_int(name, v):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SearchConfigError(f"hydra.sweeper.{name}={v!r} must be a positive integer")

    positive_int("n_trials", n_trials)
    positive_int("n_jobs", n_jobs)
    positive_int("n_startup_trials", n_startup_trials)
    if objective not in OBJECTIVES:
        raise SearchConfigError(f"hydra.sweeper.objective={objective!r}: use one of {', '.join(OBJECTIVES)}")
    if sampler not in SAMPLERS:
        raise SearchConfigError(f"hydra.sweeper.sampler={sampler!r}: use one of {', '.join(SAMPLERS)}")


def storage_url(storage: Optional[str], sweep_dir: Path) -> str:
    """null: an SQLite file in the sweep dir; a path: that SQLite file; else any SQLAlchemy URL."""
    if storage is None or str(storage) == "":
        return f"sqlite:///{(sweep_dir / DB_FILE).absolute()}"
    text = str(storage)
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().absolute()}"


def _sampler(name: str, seed: Optional[int], n_startup_trials: int, n_done: int):
    # a resumed search must not replay the random draws of the first run: offset the seed by the trials so far
    seed = None if seed is None else int(seed) + n_done
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)


def open_study(url: str, name: str, space: SearchSpace, sampler: str, seed, n_startup_trials: int):
    """Create the study, or load it to resume; refuses one made with another search space."""
    try:
        study = optuna.create_study(storage=url, study_name=name, direction="maximize", load_if_exists=True)
    except Exception as err:  # bad URL, missing driver, unreachable server: say which storage
        raise SearchConfigError(f"hydra.sweeper.storage={url}: cannot open the study there "
                                f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise SearchConfigError(f"study {name!r} in {url} minimises; a search maximises {', '.join(OBJECTIVES)}: "
                                "give another hydra.sweeper.study_name")
    wanted = describe(space)
    stored = study.user_attrs.get("search_space")
    if stored is None:
        study.set_user_attr("search_space", wanted)
    elif stored != wanted:
        changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        raise SearchConfigError(
            f"study {name!r} in {url} was made with another search space (differs in: {', '.join(changed)}); "
            "resume it with the same +search and command line, or start a new study with another "
            "hydra.sweeper.study_name or hydra.sweeper.storage")
    study.sampler = _sampler(sampler, seed, n_startup_trials, len(study.trials))
    return study


def counted(study) -> int:
    """Trials that ended with an outcome of their own; trials abandoned by a stopped driver do not count."""
    ended = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    return sum(1 for t in study.get_trials(deepcopy=False, states=ended) if not t.user_attrs.get("abandoned"))


def _set_attrs(study, trial: FrozenTrial, attrs: Dict[str, Any]) -> None:
    live = Trial(study, trial._trial_id)
    for k, v in attrs.items():
        live.set_user_attr(k, v)


def recover(study, objective: str) -> Tuple[int, int]:
    """Settle the trials a stopped driver left running, from what their jobs left on disk: a job that ended
    gives its trial its result (its job is not run again); a trial whose job has no outcome (killed with the
    driver, or still running on the cluster) is marked abandoned and its parameters are queued to run again.
    Returns (settled from disk, queued again)."""
    settled = queued = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        job_dir = t.user_attrs.get("job_dir")
        outcome = job_outcome(job_dir) if job_dir else {"status": None}
        status = outcome["status"]
        value = outcome.get(objective)
        if status == "finished" and value is not None:
            _set_attrs(study, t, {"status": "finished", "recovered": True})
            study.tell(t.number, float(value))
            log.info("trial %d: its job had ended (%s %.4f), result read from %s", t.number, objective, value, job_dir)
            settled += 1
        elif status in FAILED_OUTCOMES:
            _set_attrs(study, t, {"status": status, "error": outcome.get("error"), "recovered": True})
            study.tell(t.number, state=TrialState.FAIL)
            log.info("trial %d: its job had ended %s, read from %s", t.number, status, job_dir)
            settled += 1
        else:
            _set_attrs(study, t, {"status": status or "no result", "abandoned": True})
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            log.warning("trial %d: its job %s has no outcome (the driver stopped first); its parameters run "
                        "again as a new trial", t.number, job_dir)
            queued += 1
    return settled, queued


def tell(study, trial: Trial, ret, objective: str) -> Tuple[str, Optional[float], Optional[str]]:
    """Report one job's result (Hydra's JobReturn) to the study: its objective, or FAIL with the reason.
    Returns (status, value, error)."""
    from hydra.core.utils import JobStatus

    job_dir = trial.user_attrs.get("job_dir")
    value, error = None, None
    if ret.status == JobStatus.COMPLETED:
        result = ret.return_value
        value = result.get(objective) if isinstance(result, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            status = "finished"
        else:
            status, value = "no result", None
            error = f"the job returned {result!r}, no finite {objective} (a search takes training jobs: mode=train)"
    else:
        err = ret._return_value
        # the job's own record is the more precise one (killed by SLURM, diverged, config error)
        status = (job_outcome(job_dir)["status"] if job_dir else None) or status_of(err)
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        error = f"{type(err).__name__}: {lines[-1].strip() if lines else ''}"[:300]
    trial.set_user_attr("status", status)
    if error:
        trial.set_user_attr("error", error)
    if value is None:
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, float(value))
    return status, value, error


def results(study, objective: str, space: SearchSpace, url: str) -> Optional[Dict[str, Any]]:
    """The best trial and the count of trials by outcome; None while no trial has completed."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earliest trial
    abandoned = sum(1 for t in trials if t.user_attrs.get("abandoned"))
    return {
        "name": "eqprop_optuna",
        "study_name": study.study_name,
        "storage": url,
        "objective": objective,
        "direction": "maximize",
        "best_value": float(best.value),
        "best_params": dict(best.params),
        "best_overrides": space.overrides(dict(best.params)),
        "best_trial": best.number,
        "best_job_dir": best.user_attrs.get("job_dir"),
        "trials": {"complete": len(complete),
                   "failed": sum(1 for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("abandoned")),
                   "abandoned": abandoned},
    }


def write_results(sweep_dir: Path, data: Dict[str, Any]) -> Path:
    path = sweep_dir / RESULTS
    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(data)))
    return path


def consecutive_runs(trials: List[Trial]) -> List[List[Trial]]:
    """Trials in runs of consecutive numbers: each run is one launch whose job numbers are the trial numbers."""
    runs: List[List[Trial]] = []
    for t in sorted(trials, key=lambda t: t.number):
        if runs and runs[-1][-1].number + 1 == t.number:
            runs[-1].append(t)
        else:
            runs.append([t])
    return runs
