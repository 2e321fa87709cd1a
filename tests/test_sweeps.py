"""Sweep definitions (+sweep=<name>), the launcher presets and the sweep summary, without SLURM."""
import csv
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from eqprop.config import from_dict
from tests.launch_utils import ROOT, TINY, read_metrics

SWEEPS = {"betas": 12, "t1_t2": 9, "layer_lrs": 5, "ep_vs_bptt": 24, "paper": 33, "estimators": 21}
PAPER = ["cnn_mse_one_sided", "cnn_mse_random_sign", "cnn_mse_symmetric", "cnn_mse_bptt", "cnn_cel_symmetric",
         "cnn_cel_bptt", "cnn_cel_dropout_symmetric", "cnn_cel_dropout_bptt", "vfcnn_cel_symmetric",
         "vfcnn_cel_symmetric_same_update", "vfcnn_cel_bptt"]


@functools.lru_cache(maxsize=None)
def _jobs(name):
    """The jobs Hydra's basic sweeper makes of `-m +sweep=<name>`, each composed and validated."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        params = compose("config", [f"+sweep={name}"], return_hydra_config=True).hydra.sweeper.params
        args = [f"{k}={v}" for k, v in params.items()]
        jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)[0]
        cfgs = [OmegaConf.to_container(compose("config", [f"+sweep={name}"] + job), resolve=True) for job in jobs]
    return jobs, cfgs


def test_every_sweep_file_is_listed():
    assert sorted(p.stem for p in (ROOT / "sweeps" / "sweep").glob("*.yaml")) == sorted(SWEEPS)


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_every_job_of_every_sweep_is_a_valid_run(name):
    jobs, cfgs = _jobs(name)
    assert len(jobs) == SWEEPS[name]
    assert len({tuple(j) for j in jobs}) == len(jobs)
    for cfg in cfgs:
        from_dict(cfg)  # raises ConfigError naming the bad key
        assert cfg["sweep"]["name"] == name


def test_paper_sweep_covers_every_cifar10_preset_with_3_seeds():
    jobs, cfgs = _jobs("paper")
    assert {j[0].split("/", 1)[1] for j in jobs} == set(PAPER)
    assert all((ROOT / "conf" / "experiment" / "paper" / f"{p}.yaml").is_file() for p in PAPER)
    assert sorted({c["seed"] for c in cfgs}) == [0, 1, 2]
    assert {c["task"]["name"] for c in cfgs} == {"cifar10"}


def test_sweep_dimensions():
    jobs, cfgs = _jobs("ep_vs_bptt")
    assert {(c["estimator"]["name"], c["loss"]["name"], c["seed"]) for c in cfgs} == {
        (e, lo, s) for e in ("one_sided", "random_sign", "symmetric", "bptt") for lo in ("mse", "cel") for s in (0, 1, 2)}
    _, cfgs = _jobs("estimators")  # every estimator on one task, model and dynamics
    assert {(c["estimator"]["name"], c["seed"]) for c in cfgs} == {
        (e, s) for e in ("one_sided", "random_sign", "symmetric", "n_point", "holomorphic", "cep", "bptt")
        for s in (0, 1, 2)}
    assert len({(c["task"]["name"], str(c["model"]), str(c["dynamics"])) for c in cfgs}) == 1
    _, cfgs = _jobs("layer_lrs")
    assert all(len(c["optimizer"]["lrs"]) == len(c["model"]["archi"]) - 1 == 3 for c in cfgs)
    _, cfgs = _jobs("t1_t2")
    assert all(c["dynamics"]["T2"] <= c["dynamics"]["T1"] for c in cfgs)  # bptt can take them too


def test_launcher_presets_compose_and_take_overrides(monkeypatch):
    monkeypatch.setenv("EQPROP_SLURM_PARTITION", "gpu")
    monkeypatch.setenv("EQPROP_SLURM_TIME_MIN", "90")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        slurm = compose("config", ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0"],
                        return_hydra_config=True).hydra.launcher
        local = compose("config", ["hydra/launcher=local"], return_hydra_config=True).hydra.launcher
    s = OmegaConf.to_container(slurm, resolve=True)
    assert s["partition"] == "gpu" and s["timeout_min"] == 90 and s["gpus_per_node"] == 0
    assert s["account"] is None and s["max_num_timeout"] > 0 and s["cpus_per_task"] >= 1
    assert s["setup"][0] == f"export OMP_NUM_THREADS={s['cpus_per_task']}"
    assert OmegaConf.to_container(local, resolve=True)["_target_"].endswith("LocalLauncher")


def _summary(sweep_dir: Path):
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_a_sweep_runs_from_any_cwd_on_the_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    # the t1_t2 sweep, narrowed from the command line: T1 fixed, 2 values of T2 -> 2 jobs in parallel
    args = ["-m", "+sweep=t1_t2", "hydra/launcher=local", "hydra.launcher.gpus_per_node=0", *TINY,
            "dynamics.T1=6", "dynamics.T2=2,3", f"hydra.sweep.dir={sweep}"]
    p = subprocess.run([sys.executable, str(ROOT / "launch.py")] + args, cwd=elsewhere, capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = _summary(sweep)
    assert [(r["job"], r["status"], r["overrides"]) for r in rows] == [
        ("0", "finished", "dynamics.T2=2"), ("1", "finished", "dynamics.T2=3")]
    assert "[eqprop] sweep summary:" in p.stdout and "dynamics.T2=3" in p.stdout
    for i in (0, 1):
        assert [r["epoch"] for r in read_metrics(sweep / str(i))] == [1]
        assert OmegaConf.load(sweep / str(i) / ".hydra" / "config.yaml").dynamics.T1 == 6
    assert not (elsewhere / "results").exists() and list(elsewhere.iterdir()) == []


def test_failed_and_diverged_jobs_neither_stop_nor_hide_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    # job 0: refused by the config check, job 1: diverges (lr 1e38 overflows the cel read-out), job 2: fine
    args = ["-m", *TINY, "loss=cel", "optimizer.lr=-1,1e38,0.05", f"hydra.sweep.dir={sweep}"]
    p = subprocess.run([sys.executable, str(ROOT / "launch.py")] + args, cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert p.returncode == 1  # Hydra reports the first failed job once all of them ran
    rows = _summary(sweep)
    assert [r["status"] for r in rows] == ["config error", "diverged", "finished"], rows
    assert "optimizer.lr=-1.0 must be" in rows[0]["error"] and rows[0]["best_test_acc"] == ""
    assert "training diverged" in rows[1]["error"]
    assert float(rows[2]["best_test_acc"]) >= 0 and rows[2]["epochs"] == "1"
    assert [r["overrides"] for r in rows] == ["optimizer.lr=-1", "optimizer.lr=1e+38", "optimizer.lr=0.05"]
    # on_multirun_end never ran (the sweeper raised): the table came from the exit hook, on stderr
    assert "[eqprop] sweep summary:" in p.stderr and "config error" in p.stderr

    # by hand, later: the same table, and the summary rebuilt from the job dirs
    (sweep / "summary.csv").unlink()
    q = subprocess.run([sys.executable, "-m", "eqprop.sweep_summary", str(sweep)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    assert [r["status"] for r in _summary(sweep)] == ["config error", "diverged", "finished"]
    assert "diverged" in q.stdout and "optimizer.lr=0.05" in q.stdout


def test_summary_lists_jobs_that_never_started_and_rejects_non_sweeps(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    # what the basic sweeper saves before launching: the jobs can be listed before any of them ran
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["+sweep=t1_t2"], return_hydra_config=True)
    OmegaConf.save(cfg, sweep / "multirun.yaml")
    from eqprop.sweep_summary import main

    assert main([str(sweep)]) == 0
    rows = _summary(sweep)
    assert len(rows) == 9 and {r["status"] for r in rows} == {"not started"}
    assert [r["overrides"] for r in rows[:2]] == ["dynamics.T1=15 dynamics.T2=5", "dynamics.T1=15 dynamics.T2=10"]
    assert main([str(tmp_path / "nowhere")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_sweeps_are_private_under_a_group_umask(tmp_path):
    """umask 002 (a group-shared project dir): the sweep dir is 0700 and submitit's pickles 0600 (a
    pickle others can rewrite runs their code in the next requeue); the run files keep the umask."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=local", "hydra.launcher.gpus_per_node=0", *TINY, "task=digits",
            f"hydra.sweep.dir={sweep}"]
    p = subprocess.run([sys.executable, str(ROOT / "launch.py")] + args, cwd=ROOT, capture_output=True, text=True,
                       timeout=600, umask=0o002)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert _mode(sweep) == 0o700
    pickles = sorted((sweep / ".submitit").rglob("*.pkl"))
    assert {q.name.split("_", 2)[-1] for q in pickles} == {"submitted.pkl", "result.pkl"}, pickles
    assert {q.name: _mode(q) for q in pickles} == {q.name: 0o600 for q in pickles}
    assert all(_mode(d) == 0o700 for d in [sweep / ".submitit", *(sweep / ".submitit").iterdir()] if d.is_dir())
    assert _mode(sweep / "0" / "metrics.jsonl") == 0o664  # the job ran with the user's umask

    # Hydra's basic launcher (no hydra/launcher=) and a mode given on the command line
    shared = tmp_path / "shared"
    p = subprocess.run([sys.executable, str(ROOT / "launch.py"), "-m", *TINY, "task=digits", "+hydra.sweep.mode=0750",
                        f"hydra.sweep.dir={shared}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       umask=0o002)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _mode(shared) == 0o750
