"""A Hydra sweeper that runs an Optuna search (TPE by default) in parallel batches through the configured launcher.

`python launch.py -m +search=layer_lrs hydra/launcher=slurm` (conf/search/*.yaml select it through
conf/hydra/sweeper/eqprop_optuna.yaml; docs/sweeps.md says why it is ours and not hydra-optuna-sweeper).
Each batch asks n_jobs trials, launches them as jobs <trial number> of the sweep dir, and tells each
trial its job's best test accuracy, or FAIL when the job failed, diverged or was killed: a bad trial
never stops the search. The study lives in hydra.sweeper.storage (default: <sweep dir>/optuna.db), so a
driver started again on it carries on: trials that ended are not rerun (see eqprop/search_study.py).

Kept free of heavy imports: Hydra imports every hydra_plugins module at the start of every run and job.
"""
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException, HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class NoTrialCompleted(CompactHydraException):
    """Every trial failed: there is no best value to report (the summary says why each one failed)."""


class OptunaSweeper(Sweeper):
    def __init__(self, n_trials: int, n_jobs: int, objective: str, sampler: str, seed: Optional[int],
                 n_startup_trials: int, storage: Optional[str], study_name: str, params: Optional[DictConfig]):
        super().__init__()
        self.n_trials, self.n_jobs, self.objective = n_trials, n_jobs, objective
        self.sampler, self.seed, self.n_startup_trials = sampler, seed, n_startup_trials
        self.storage, self.study_name = storage, study_name
        self.params = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from eqprop import search_study as ss
        from eqprop.search_space import SearchConfigError
        from eqprop.sweep_dir import created_here

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        # the sweep-summary callback may have made it already (hydra.sweep.mode), for this command
        new_dir = not sweep_dir.exists() or created_here(sweep_dir)
        try:
            space = self._checked_space(arguments)
            url = ss.storage_url(self.storage, sweep_dir)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            study = ss.open_study(url, str(self.study_name), space, self.sampler, self.seed, self.n_startup_trials)
        except SearchConfigError as err:  # bad input: exit 2 before any trial, as for a bad run config
            if new_dir and sweep_dir.is_dir() and not any(sweep_dir.iterdir()):
                sweep_dir.rmdir()
            print(f"[eqprop] error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("study %r in %s: %d trials so far, %d wanted, %d at a time; space: %s", study.study_name, url,
                 ss.counted(study), self.n_trials, self.n_jobs, ", ".join(space.dims))
        settled, queued = ss.recover(study, self.objective)
        if settled or queued:
            log.info("resumed: %d trials settled from their job dirs, %d queued to run again", settled, queued)

        returns = []
        while (left := self.n_trials - ss.counted(study)) > 0:
            trials = [study.ask(fixed_distributions=space.dims) for _ in range(min(self.n_jobs, left))]
            runnable = []
            for trial in trials:
                overrides = space.overrides(trial.params)
                trial.set_user_attr("job_dir", str((sweep_dir / str(trial.number)).absolute()))
                trial.set_user_attr("overrides", overrides)
                if self._composes(study, trial, overrides):
                    runnable.append(trial)
            for run in ss.consecutive_runs(runnable):
                rets = self.launcher.launch([t.user_attrs["overrides"] for t in run], initial_job_idx=run[0].number)
                for trial, ret in zip(run, rets):
                    status, value, error = ss.tell(study, trial, ret, self.objective)
                    if value is None:
                        log.warning("trial %d %s: %s", trial.number, status, error)
                    else:
                        log.info("trial %d: %s %.4f", trial.number, self.objective, value)
                returns.append(rets)
            self._write_results(study, space, url, sweep_dir)

        best = self._write_results(study, space, url, sweep_dir)
        if best is None:
            raise NoTrialCompleted(f"no trial of study {study.study_name!r} completed; see {sweep_dir / 'summary.csv'}")
        log.info("best trial %d: %s %.4f with %s (%s)", best["best_trial"], self.objective, best["best_value"],
                 " ".join(best["best_overrides"]), sweep_dir / ss.RESULTS)
        return returns

    def _checked_space(self, arguments: List[str]):
        """The search space, and one trial of it composed, so that a typo in a key stops the search here."""
        from eqprop import search_study as ss
        from eqprop.search_space import SearchConfigError, build, example_params

        ss.check_settings(self.n_trials, self.n_jobs, self.objective, self.sampler, self.n_startup_trials)
        space = build(self.params, arguments, self.hydra_context.config_loader)
        try:
            self.validate_batch_is_legal([space.overrides(example_params(space))])
        except HydraException as err:
            raise SearchConfigError(f"a trial of this search does not compose: {' '.join(str(err).split())}") from None
        return space

    def _composes(self, study, trial, overrides: List[str]) -> bool:
        """A sampled value the config refuses (a categorical choice naming no config) fails that trial only."""
        from optuna.trial import TrialState

        try:
            self.validate_batch_is_legal([overrides])
            return True
        except HydraException as err:
            trial.set_user_attr("status", "config error")
            trial.set_user_attr("error", " ".join(str(err).split())[:300])
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d config error: %s", trial.number, " ".join(str(err).split()))
            return False

    def _write_results(self, study, space, url, sweep_dir: Path):
        from eqprop import search_study as ss

        data = ss.results(study, self.objective, space, url)
        if data is not None:
            ss.write_results(sweep_dir, data)
        return data
