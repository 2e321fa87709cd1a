"""An Optuna search on a real SLURM cluster (hydra/launcher=slurm): one job array per batch of trials, and a
driver that dies while its jobs run on, started again on the same study.

Skipped without a cluster, like tests/test_slurm.py (whose fixture finds it); EQPROP_REQUIRE_SLURM=1 fails instead.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from eqprop.search_study import storage_url
from tests.launch_utils import ROOT, TINY, read_metrics
from tests.test_slurm import SMALL_JOB, _array_tasks, _summary, _wait_sacct, slurm  # noqa: F401 (fixture)

pytestmark = pytest.mark.slurm

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


def _finished_jobs(sweep: Path):
    return {int(p.parent.name): p.stat().st_mtime_ns for p in sweep.glob("*/job_result.json")}


def test_six_trial_search_on_slurm_resumes_after_its_driver_dies(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    # the output layer's rate is a choice: 1e38 overflows the cross-entropy read-out (a diverging trial)
    args = ["+search=layer_lrs", *TINY, "task=digits", "loss=cel", "optimizer.lrs.2=choice(0.05,1e38)",
            "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2", "hydra.sweeper.seed=2", *SMALL_JOB,
            f"hydra.sweep.dir={sweep}"]
    cmd = [sys.executable, str(ROOT / "launch.py"), "-m"] + args
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(cmd, cwd=ROOT, env=slurm, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 400
            while len(_finished_jobs(sweep)) < 3:
                assert driver.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
                time.sleep(0.5)
        finally:
            driver.send_signal(signal.SIGKILL)  # the driver only: its SLURM jobs run on, as after a login-node crash
            driver.wait()
    tasks = _array_tasks(sweep)
    # let the orphaned jobs end, so that the new driver finds every one of them settled on disk
    states = _wait_sacct(tasks, slurm, lambda s: all(s.get(t, [""])[-1] in TERMINAL for t in tasks), timeout=300)
    assert all(states[t][-1] == "COMPLETED" for t in tasks), states
    before = _finished_jobs(sweep)
    first = optuna.load_study(study_name="layer_lrs", storage=storage_url(None, sweep)).get_trials()
    assert len(before) >= 3

    p = subprocess.run(cmd, cwd=ROOT, env=slurm, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    trials = optuna.load_study(study_name="layer_lrs", storage=storage_url(None, sweep)).get_trials()
    # every job had ended, so only a trial asked but never submitted (the driver died in between) is abandoned
    abandoned = [t for t in trials if t.user_attrs.get("abandoned")]
    assert all(t.number not in before and not (sweep / str(t.number)).exists() for t in abandoned)
    trials = [t for t in trials if not t.user_attrs.get("abandoned")]
    assert len(trials) == 6
    # no trial of the first driver ran again: same result files, no launch line for them
    assert {n: m for n, m in _finished_jobs(sweep).items() if n in before} == before
    launched = [int(line.split("#")[1].split(":")[0]) for line in (p.stdout + p.stderr).splitlines() if "\t#" in line]
    assert sorted(launched) == [t.number for t in trials if t.number >= len(first)], p.stdout[-3000:] + p.stderr[-3000:]
    # one array per batch of 2 trials; every job ran to its end on the cluster (a diverged one too)
    all_tasks = _array_tasks(sweep)
    arrays = {}
    for t in all_tasks:
        arrays.setdefault(t.split("_")[0], []).append(t)
    assert len(all_tasks) == 6 and sorted(len(v) for v in arrays.values()) == [2, 2, 2], all_tasks
    states = _wait_sacct(all_tasks, slurm, lambda s: all(s.get(t) == ["COMPLETED"] for t in all_tasks))
    assert all(states.get(t) == ["COMPLETED"] for t in all_tasks), states
    rows = _summary(sweep)
    assert {rows[str(t.number)]["job_id"] for t in trials} == set(all_tasks)
    for t in trials:
        m = read_metrics(sweep / str(t.number))
        if t.params["optimizer.lrs.2"] == 1e38:
            assert t.state == TrialState.FAIL and t.user_attrs["status"] == "diverged", t.user_attrs
            assert rows[str(t.number)]["status"] == "diverged"
        else:
            assert t.state == TrialState.COMPLETE and t.value == max(r["test_acc"] for r in m)
            assert rows[str(t.number)]["status"] == "finished"
    best = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    top = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    assert best["best_value"] == max(r["test_acc"] for r in read_metrics(sweep / str(top.number)))
    assert best["best_trial"] == top.number and best["best_params"] == top.params
