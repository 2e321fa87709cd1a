"""Sweeps on a real SLURM cluster through hydra/launcher=slurm (start one: scripts/slurm/cluster.sh start).

Skipped when no cluster answers (a laptop); EQPROP_REQUIRE_SLURM=1 (CI) makes that a failure
instead, so a broken cluster cannot pass as a skip. Each test uses its own sweep dir, hence its own
submitit folder: job ids restart at 1 whenever the cluster's state is wiped.
"""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch_utils import ROOT, TINY, read_metrics

pytestmark = pytest.mark.slurm

# what this GPU-less 2-core test node can grant; the slurm preset asks for a GPU by default
SMALL_JOB = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
             "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]


def _slurm_env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if "SLURM_CONF" not in env:
        out = subprocess.run([str(ROOT / "scripts/slurm/cluster.sh"), "env"], capture_output=True, text=True)
        m = re.search(r"SLURM_CONF=(\S+)", out.stdout)
        if m and Path(m.group(1)).is_file():
            env["SLURM_CONF"] = m.group(1)
    return env


@pytest.fixture(scope="module")
def slurm():
    env = _slurm_env()
    why = None
    conf = env.get("SLURM_CONF")
    if shutil.which("sinfo", path=env.get("PATH")) is None:
        why = "no sinfo on PATH"
    elif conf and not Path(conf).is_file():
        why = f"SLURM_CONF={conf} does not exist"
    else:
        try:
            p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env, timeout=15)
            state = p.stdout.strip()
            if p.returncode != 0 or state not in ("idle", "mixed", "allocated"):
                why = f"sinfo answers {(p.stderr or state).strip()[:200]!r}"
        except subprocess.TimeoutExpired:  # no configuration: the client looks for one in DNS
            why = "sinfo did not answer within 15 s"
    if why:
        msg = f"no SLURM cluster reachable ({why}); start one with scripts/slurm/cluster.sh start"
        if os.environ.get("EQPROP_REQUIRE_SLURM") == "1":
            pytest.fail(msg + " (EQPROP_REQUIRE_SLURM=1)")
        pytest.skip(msg)
    return env


def _cmd(args):
    return [sys.executable, str(ROOT / "launch.py"), "-m"] + list(args)


def _sweep(args, env, timeout=600):
    return subprocess.run(_cmd(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _array_tasks(sweep_dir: Path):
    """submitit's per-task folders, <array id>_<task>: the SLURM ids of this sweep's jobs."""
    d = sweep_dir / ".submitit"
    return sorted(p.name for p in d.iterdir() if re.fullmatch(r"\d+_\d+", p.name)) if d.is_dir() else []


def _sacct(job_ids, env, duplicates=False):
    """{job id: [states, oldest first]} from SLURM's accounting."""
    args = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)] + (["-D"] if duplicates else [])
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=30, check=True).stdout
    states = {}
    for line in out.splitlines():
        jid, state = line.split("|")[:2]
        states.setdefault(jid, []).append(state.split()[0])
    return states


def _wait_sacct(job_ids, env, done, duplicates=False, timeout=60):
    """Accounting lags the job's end by a few seconds."""
    deadline = time.time() + timeout
    while True:
        states = _sacct(job_ids, env, duplicates)
        if done(states) or time.time() > deadline:
            return states
        time.sleep(2)


def _summary(sweep_dir: Path):
    with open(sweep_dir / "summary.csv") as f:
        return {r["job"]: r for r in csv.DictReader(f)}


def _log(sweep_dir: Path, task: str) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((sweep_dir / ".submitit" / task).glob("*_log.*")))


def test_four_job_sweep_completes_on_slurm(slurm, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # the betas sweep file, narrowed from the command line to 2 estimators x 2 betas
    p = _sweep(["+sweep=betas", "estimator=symmetric,one_sided", "estimator.beta=0.5,1.0", *TINY, *SMALL_JOB,
                f"hydra.sweep.dir={sweep_dir}"], slurm)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    tasks = _array_tasks(sweep_dir)
    assert len(tasks) == 4 and len({t.split("_")[0] for t in tasks}) == 1, tasks  # one array of 4
    states = _wait_sacct(tasks, slurm, lambda s: all(s.get(t) == ["COMPLETED"] for t in tasks))
    assert all(states.get(t) == ["COMPLETED"] for t in tasks), states
    for i in range(4):
        m = read_metrics(sweep_dir / str(i))
        assert [r["epoch"] for r in m] == [1] and m[0]["status"] == "ok", m
    rows = _summary(sweep_dir)
    assert [rows[str(i)]["status"] for i in range(4)] == ["finished"] * 4, rows
    assert {rows[str(i)]["overrides"] for i in range(4)} == {
        f"estimator={e} estimator.beta={b}" for e in ("symmetric", "one_sided") for b in ("0.5", "1.0")}
    assert {rows[str(i)]["job_id"] for i in range(4)} == set(tasks)
    assert all(0 <= float(rows[str(i)]["best_test_acc"]) <= 1 for i in range(4))


def _task(sweep_dir: Path, job: int):
    return next((t for t in _array_tasks(sweep_dir) if t.endswith(f"_{job}")), None)


def test_requeued_and_timed_out_jobs_resume_and_end_like_an_uninterrupted_one(slurm, tmp_path):
    sweep_dir = tmp_path / "sweep"
    epochs = 5
    # three identical jobs (they differ only in a label). Mid-epoch 2, job 0 is requeued by SLURM
    # (SIGTERM, as on pre-emption) and job 1 gets the time-limit warning that SLURM sends
    # signal_delay_s before the limit (USR2); job 2 runs undisturbed. ~1,000 examples at T1=1500
    # take ~5 s per epoch on the fast path (T1=100 took 0.5 s, and the signals, sent one after the
    # other, landed after epoch 2), so both land mid-run.
    args = ["task=digits", "task.limit_train=1024", "task.limit_test=100", "task.batch_size=32",
            "dynamics.T1=1500", "dynamics.T2=5", f"epochs={epochs}", "device=cpu",
            "sweep.name=requeued,timed_out,reference", *SMALL_JOB, f"hydra.sweep.dir={sweep_dir}"]
    stop = {0: ["scontrol", "requeue"], 1: ["scancel", "--signal=USR2"]}
    log = open(tmp_path / "launcher.log", "w")
    launcher = subprocess.Popen(_cmd(args), cwd=ROOT, env=slurm, stdout=log, stderr=subprocess.STDOUT)
    finished = False
    try:
        deadline = time.time() + 400
        while stop:
            assert launcher.poll() is None and time.time() < deadline, (tmp_path / "launcher.log").read_text()[-3000:]
            time.sleep(0.5)
            for job, cmd in list(stop.items()):
                task = _task(sweep_dir, job)
                # the job's own log says when epoch 1 is over (metrics, checkpoint and plots written)
                if task and "[eqprop] epoch 1/" in _log(sweep_dir, task):
                    time.sleep(read_metrics(sweep_dir / str(job))[0]["seconds"] / 5)  # a fifth into epoch 2
                    subprocess.run(cmd + [task], env=slurm, check=True, timeout=30)
                    assert len(read_metrics(sweep_dir / str(job))) < epochs, "the job was over; make it slower"
                    del stop[job]
        assert launcher.wait(timeout=600) == 0, (tmp_path / "launcher.log").read_text()[-3000:]
        finished = True
    finally:
        if not finished:  # leave nothing running on the shared cluster
            if launcher.poll() is None:
                launcher.send_signal(signal.SIGINT)
                launcher.wait(timeout=60)
            if _task(sweep_dir, 0):
                subprocess.run(["scancel", _task(sweep_dir, 0).split("_")[0]], env=slurm, timeout=30)
        log.close()

    logs = {job: _log(sweep_dir, _task(sweep_dir, job)) for job in (0, 1)}
    # the engine saved a mid-epoch checkpoint on the way out...
    assert re.search(r"stopped by SIGTERM at epoch 2, batch \d+", logs[0]), logs[0][-3000:]
    assert re.search(r"stopped by SIGUSR1 at epoch 2, batch \d+", logs[1]), logs[1][-3000:]
    assert "Caught signal SIGUSR2" in logs[1]  # ...then submitit requeued the job itself
    # ...and the rerun continued from it, not from epoch 1
    for job in (0, 1):
        assert re.search(r"\[eqprop\] resuming \S+ at epoch 2, batch \d+", logs[job]), logs[job][-3000:]
    tasks = [_task(sweep_dir, job) for job in (0, 1, 2)]
    states = _wait_sacct(tasks, slurm, lambda s: all(s.get(t, [""])[-1] == "COMPLETED" for t in tasks),
                         duplicates=True)
    assert [states[t] for t in tasks] == [["REQUEUED", "COMPLETED"]] * 2 + [["COMPLETED"]], states

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    want = read_metrics(sweep_dir / "2")
    assert [r["epoch"] for r in want] == list(range(1, epochs + 1))
    for job in (0, 1):
        assert strip(read_metrics(sweep_dir / str(job))) == strip(want)  # each epoch once, same numbers
    rows = _summary(sweep_dir)
    assert [rows[str(j)]["status"] for j in range(3)] == ["finished"] * 3, rows
    assert len({rows[str(j)]["best_test_acc"] for j in range(3)}) == 1


def test_a_cancelled_job_neither_stops_nor_hides_the_others(slurm, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # jobs of well over SLURM's KillWait (5 s, scripts/slurm/cluster.sh): a SIGTERM that lands before the
    # engine's handler is up is swallowed by submitit, and only the SIGKILL that follows ends the job
    launcher = subprocess.Popen(_cmd([*TINY, "epochs=3", "task.limit_train=1024", "dynamics.T1=1500", "seed=0,1",
                                      *SMALL_JOB,
                                      f"hydra.sweep.dir={sweep_dir}"]), cwd=ROOT,
                                env=slurm, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not (sweep_dir / "0" / ".hydra" / "overrides.yaml").exists():  # job 0 has started
            assert launcher.poll() is None and time.time() < deadline
            time.sleep(0.5)
        subprocess.run(["scancel", _task(sweep_dir, 0)], env=slurm, check=True, timeout=30)
        out, _ = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1, out[-3000:]  # Hydra reports the cancelled job once all have ended
    assert "has not produced any output (state: CANCELLED" in out
    rows = _summary(sweep_dir)
    assert (rows["0"]["status"], rows["1"]["status"]) == ("killed", "finished"), rows
    assert "CANCELLED" in rows["0"]["error"]
    assert [r["epoch"] for r in read_metrics(sweep_dir / "1")] == [1, 2, 3]  # the other job ran to its end


@pytest.mark.parametrize("override, reason", [
    ("hydra.launcher.gpus_per_node=1", "Invalid generic resource (gres) specification"),
    ("hydra.launcher.cpus_per_task=64", "More processors requested than permitted"),
    ("hydra.launcher.timeout_min=120", "Requested time limit is invalid"),
])
def test_impossible_request_fails_fast_with_a_clear_message(slurm, tmp_path, override, reason):
    sweep_dir = tmp_path / "sweep"
    t0 = time.time()
    p = _sweep([*TINY, "seed=0,1", *SMALL_JOB, override, f"hydra.sweep.dir={sweep_dir}"], slurm, timeout=120)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert time.time() - t0 < 60
    assert "refused the sweep, no job was submitted" in p.stderr and reason in p.stderr, p.stderr[-2000:]
    assert override.split("=")[0] in p.stderr or "hydra.launcher.<key>" in p.stderr
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert _array_tasks(sweep_dir) == []
    rows = _summary(sweep_dir)
    assert [r["status"] for r in rows.values()] == ["not started", "not started"], rows
