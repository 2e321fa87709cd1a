"""hydra-submitit-launcher, made safe for eqprop runs that SLURM stops, requeues or kills.

conf/hydra/launcher/{slurm,local}.yaml point their _target_ here (Hydra takes launchers only from the
hydra_plugins package). On top of the plugin:
- jobs can import eqprop whatever directory the sweep was started from (the repo goes on the
  PYTHONPATH that submitit passes on to the jobs);
- the launcher waits for every job, even when one of them was killed without a result, so one
  bad job neither stops nor hides the others (it becomes a failed job in Hydra's report and a
  "killed" row in the sweep summary);
- the scheduler refusing the request (sbatch failing) is one clear error, not a traceback;
- the sweep dir is hydra.sweep.mode (0700 unless set), and submitit's folders and pickles are
  0700/0600 whatever the umask (unpickling runs code); the runs' own files keep the user's umask.
In a SLURM job (SlurmLauncher.__call__):
- a job stopped by SIGTERM (scontrol requeue, pre-emption) has had the engine save a mid-epoch
  checkpoint; it then exits *without* a result, because submitit's launcher takes any result file
  as the job's final outcome and would stop waiting for the requeued run;
- at submitit's time-limit warning (USR2, signal_delay_s before the kill) the engine first ends
  its batch and saves, then submitit requeues the job (at most max_num_timeout times). The rerun
  lands in the same output dir with the same overrides and resumes from that checkpoint.
"""
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, List, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as plugin
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
PICKLE_UMASK = 0o077
ROOT = str(Path(__file__).resolve().parents[2])  # the repo: eqprop and these plugins


class SubmissionError(CompactHydraException):
    """The scheduler refused the sweep; nothing was submitted. (Compact: Hydra prints the message
    alone, the stack trace would only show Hydra's internals.)"""


def _put_repo_on_pythonpath() -> None:
    # a job unpickles this module (and the sweep-summary callback) before any eqprop code runs
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if ROOT not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + parts)


def _last_line(err) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _reason(err: BaseException) -> str:
    """One line out of submitit's multi-line errors about a job without a result."""
    from submitit.core.utils import UncompletedJobError

    text = str(err)
    state = re.search(r"has not produced any output \((state: [^)]*)\)", text)
    if isinstance(err, UncompletedJobError) and state:
        return f"ended without a result ({state.group(1)})"
    parts = text.split("-" * 22)  # FailedJobError: the job's traceback sits between two rules
    return _last_line(parts[1] if len(parts) >= 3 else text)


class _Launch:
    """Same submission as hydra-submitit-launcher 1.2.0's launch(), with robust result collection."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        from eqprop.sweep_dir import make_sweep_dir

        assert self.config is not None and len(job_overrides) > 0
        _put_repo_on_pythonpath()
        sweep_dir = make_sweep_dir(self.config)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        # submitit's folders and pickles private (0700/0600) whatever the umask: a pickle is code that
        # the job (and its requeues) and this launcher run. The jobs' own files keep the user's umask.
        self._user_umask = os.umask(PICKLE_UMASK)
        try:
            jobs, job_params = self._submit(submitit, job_overrides, initial_job_idx)
        finally:
            os.umask(self._user_umask)
        return [self._collect(job, list(ov), idx, sweep_dir)
                for job, (ov, _, idx, _, _) in zip(jobs, job_params)]

    def _submit(self, submitit, job_overrides, initial_job_idx):
        params = self.params
        init_keys = {"submitit_folder", "max_num_timeout"}
        init_params = {"folder": params["submitit_folder"]}
        if "max_num_timeout" in params:
            init_params[f"{self._EXECUTOR}_max_num_timeout"] = params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in params.items() if k not in init_keys})
        job_params: List[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        try:
            return executor.map_array(self, *zip(*job_params)), job_params
        except submitit.core.utils.FailedJobError as err:
            raise SubmissionError(self._refused(err)) from None

    def __call__(self, *args, **kwargs) -> JobReturn:
        """In the job: the run with the user's umask, then submitit's result pickle (written once
        this returns) private again."""
        os.umask(getattr(self, "_user_umask", PICKLE_UMASK))
        try:
            return super().__call__(*args, **kwargs)
        finally:
            os.umask(PICKLE_UMASK)

    def _refused(self, err: BaseException) -> str:
        asked = {k: self.params.get(k) for k in ("partition", "account", "qos", "nodes", "tasks_per_node",
                                                 "cpus_per_task", "gpus_per_node", "mem_gb", "timeout_min")
                 if self.params.get(k) is not None}
        return (f"the {self._EXECUTOR} scheduler refused the sweep, no job was submitted: {_last_line(err)}\n"
                f"Requested per job: {' '.join(f'{k}={v}' for k, v in asked.items())}. "
                "Change them with hydra.launcher.<key>=... (e.g. hydra.launcher.gpus_per_node=0 on a cluster "
                "without GPUs, a smaller timeout_min than the partition's limit) or the EQPROP_SLURM_* "
                "variables; see docs/sweeps.md.")

    def _collect(self, job, overrides: List[str], idx: int, sweep_dir: Path) -> JobReturn:
        from submitit.core.utils import UncompletedJobError

        from eqprop.runs import record_job

        try:
            return job.results()[0]
        except Exception as err:  # no result: killed by the scheduler, or submitit itself failed
            status = "killed" if isinstance(err, UncompletedJobError) else "failed"
            job_dir = sweep_dir / str(idx)
            subdir = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir")
            if subdir == "${hydra.job.num}" and job_dir.is_dir():
                record_job(job_dir, status, error=_reason(err), job_id=str(job.job_id), overrides=overrides)
            log.error(f"job #{idx} ({job.job_id}): {_reason(err)}; logs: {job.paths.stderr}")
            return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=err)


class LocalLauncher(_Launch, plugin.LocalLauncher):
    pass


class _TimeLimitWarning:
    """Routes submitit's time-limit/pre-emption warning (USR2) through the engine's checkpoint."""

    def __init__(self, grace_s: int):
        self.grace_s = max(1, grace_s)
        self.warned = False
        self._submitit = None

    def __enter__(self):
        self._submitit = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, self._on_warning)
        return self

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGUSR2, self._submitit)

    def _on_warning(self, signum, frame):
        self.warned = True
        engine = signal.getsignal(signal.SIGUSR1)
        if not callable(engine):  # outside the training loop: the last checkpoint is all there is
            self.requeue_now()
            return
        engine(signal.SIGUSR1, frame)  # the engine saves and stops at the next batch boundary
        # the step in flight may outlast the warning (a long evaluation): requeue before the kill anyway
        signal.signal(signal.SIGALRM, lambda *_: self.requeue_now())
        signal.alarm(self.grace_s)

    def requeue_now(self):
        """submitit's own handler: pickles the job again, `scontrol requeue`s it and exits; raises
        (the job then fails with the reason) once max_num_timeout time-outs are used up."""
        signal.alarm(0)
        os.umask(PICKLE_UMASK)  # submitit pickles the job again for its rerun
        if callable(self._submitit):
            self._submitit(signal.SIGUSR2, None)


class SlurmLauncher(_Launch, plugin.SlurmLauncher):
    def __call__(self, *args, **kwargs) -> JobReturn:
        with _TimeLimitWarning(int(self.params.get("signal_delay_s") or 120) // 2) as warning:
            ret = super().__call__(*args, **kwargs)
        err = ret._return_value if ret.status == JobStatus.FAILED else None
        if type(err).__name__ == "Interrupted":  # the engine saved a checkpoint and stopped on a signal
            if warning.warned:
                print("[eqprop] time limit near: checkpoint saved, submitit requeues this job", file=sys.stderr,
                      flush=True)
                warning.requeue_now()
            # SIGTERM: SLURM itself requeues (or cancels) the job; no result, so the launcher waits on
            print("[eqprop] checkpoint saved; exiting without a result, SLURM requeues this job (or it was "
                  "cancelled)", file=sys.stderr, flush=True)
            sys.exit(err.exit_code)
        return ret
