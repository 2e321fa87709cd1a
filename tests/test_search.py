"""Optuna searches (+search=<name>): the search space schema, the study's resume, and real searches on the
local submitit launcher (a driver killed mid-search and started again; a diverging trial)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from eqprop.config import from_dict
from eqprop.search_space import SearchConfigError, build, example_params
from eqprop.search_study import open_study, counted, recover, storage_url
from tests.launch_utils import ROOT, TINY, read_metrics

SEARCHES = {"layer_lrs": ["optimizer.lrs.0", "optimizer.lrs.1", "optimizer.lrs.2"],
            "betas_t": ["estimator.beta", "dynamics.T1", "dynamics.T2"]}


def _compose(overrides, hydra=False):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_search_files_select_the_optuna_sweeper_and_every_corner_is_a_valid_run(name):
    sweeper = _compose([f"+search={name}"], hydra=True).hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.eqprop_sweepers.optuna_sweeper.OptunaSweeper"
    space = build(OmegaConf.to_container(sweeper.params), [])
    assert sorted(space.dims) == sorted(SEARCHES[name])
    assert (ROOT / "conf" / "search" / f"{name}.yaml").is_file()
    for corner in ("low", "high"):
        point = {k: getattr(d, corner) for k, d in space.dims.items()}
        cfg = OmegaConf.to_container(_compose([f"+search={name}"] + space.overrides(point)), resolve=True)
        from_dict(cfg)  # raises ConfigError naming the bad key
        if name == "layer_lrs":
            assert cfg["optimizer"]["lrs"] == [point[f"optimizer.lrs.{i}"] for i in range(3)]
            assert len(cfg["optimizer"]["lrs"]) == len(cfg["model"]["archi"]) - 1
    if name == "layer_lrs":
        assert all(isinstance(d, FloatDistribution) and d.log for d in space.dims.values())
    else:
        assert space.dims["estimator.beta"].log and space.dims["dynamics.T2"].high <= space.dims["dynamics.T1"].low
        # every point of the space is valid for bptt too (T2 <= T1)
        from_dict(OmegaConf.to_container(_compose(["+search=betas_t", "estimator=bptt"] + space.overrides(
            {"estimator.beta": 0.5, "dynamics.T1": 10, "dynamics.T2": 10})), resolve=True))


def test_command_line_adds_replaces_and_fixes_dimensions():
    params = {"optimizer.lrs.0": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
              "optimizer.lrs.1": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
              "estimator.beta": {"type": "float", "low": 0.1, "high": 1.0}}
    space = build(params, ["estimator.beta=tag(log,interval(0.05,0.5))", "dynamics.T1=range(10,60,10)",
                           "estimator=choice(one_sided,symmetric)", "dynamics.T2=3", "task=digits"])
    assert space.dims["estimator.beta"] == FloatDistribution(0.05, 0.5, log=True)
    assert space.dims["dynamics.T1"] == IntDistribution(10, 50, step=10)  # range's stop is excluded
    assert space.dims["estimator"] == CategoricalDistribution(["one_sided", "symmetric"])
    assert space.fixed == ["dynamics.T2=3", "task=digits"]
    assert space.overrides({"optimizer.lrs.1": 0.25, "optimizer.lrs.0": 0.5, "dynamics.T1": 20}) == [
        "dynamics.T1=20", "optimizer.lrs=[0.5,0.25]", "dynamics.T2=3", "task=digits"]
    # a key fixed on the command line leaves the space, every item of a list key with it
    with pytest.raises(SearchConfigError, match="no dimension left"):
        build(params, ["optimizer.lrs=[0.1,0.2]", "estimator.beta=0.3"])
    assert sorted(build(params, ["optimizer.lrs=[0.1,0.2]"]).dims) == ["estimator.beta"]


F = {"type": "float", "low": 0.1, "high": 1.0}


@pytest.mark.parametrize("spec, message", [
    ({"type": "gauss", "low": 0, "high": 1}, "unknown distribution type 'gauss'; use one of float, int, categorical"),
    ({"type": "log_float", "low": 0.1, "high": 1}, "unknown distribution type 'log_float'"),
    ({**F, "low": 1.0}, "low=1.0 must be below high=1.0"),
    ({"type": "int", "low": 10, "high": 5}, "low=10 must be below high=5"),
    ({**F, "low": 0, "log": True}, "log: true needs low > 0 (got low=0.0)"),
    ({**F, "low": -1, "log": True}, "log: true needs low > 0"),
    ({"type": "int", "low": 1.5, "high": 5}, "must be an integer"),
    ({**F, "log": True, "step": 0.1}, "step and log: true cannot be combined"),
    ({**F, "lower": 0.1}, "lower not allowed for type: float"),
    ({"type": "categorical", "choices": []}, "non-empty list of choices"),
    ({"type": "float", "low": 0.1}, "needs low and high"),
    ({**F, "high": "big"}, "high='big' must be a number"),
    ("0.1,1.0", "expected a mapping"),
])
def test_bad_search_spaces_are_refused_naming_the_dimension(spec, message):
    with pytest.raises(SearchConfigError) as err:
        build({"estimator.beta": spec}, [])
    assert "hydra.sweeper.params.estimator.beta" in str(err.value) and message in str(err.value), str(err.value)


def test_list_dimensions_must_be_numbered_from_zero():
    with pytest.raises(SearchConfigError, match=r"optimizer.lrs.<i> dimensions must be numbered 0..n-1"):
        build({"optimizer.lrs.0": F, "optimizer.lrs.2": F}, [])


def _launch(args, cwd=ROOT, timeout=600, **kw):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), "-m"] + list(args), cwd=cwd, timeout=timeout,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"), **kw)


@pytest.mark.parametrize("args, message", [
    (["hydra.sweeper.params={estimator.beta: {type: gauss, low: 0, high: 1}}"],
     "hydra.sweeper.params.estimator.beta: unknown distribution type 'gauss'"),
    (["dynamics.T1=range(10,60,10)", "estimator.beta=interval(1.0,0.5)"],
     "command line estimator.beta=interval(1.0,0.5): low=1.0 must be below high=0.5"),
    (["estimator.beta=tag(log,interval(0,1))"], "log: true needs low > 0"),
    (["dynamics.T11=range(10,60,10)"], "a trial of this search does not compose: Could not override 'dynamics.T11'"),
    (["hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0 must be a positive integer"),
    (["hydra.sweeper.sampler=cmaes"], "hydra.sweeper.sampler='cmaes': use one of tpe, random"),
])
def test_bad_search_config_exits_2_before_any_trial(tmp_path, args, message):
    sweep = tmp_path / "sweep"
    p = _launch(["+search=betas_t", *args, f"hydra.sweep.dir={sweep}"], timeout=120)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"[eqprop] error: " in p.stderr and message in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert not sweep.exists()  # no trial, no study, no dir


def _write_job(job_dir: Path, status, test_accs=()):
    job_dir.mkdir(parents=True)
    (job_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": i + 1, "test_acc": a, "status": "ok"}) + "\n" for i, a in enumerate(test_accs)))
    if status:
        (job_dir / "job_result.json").write_text(json.dumps({"status": status, "error": f"{status} here"}))


def test_a_resumed_study_settles_its_running_trials_from_their_job_dirs(tmp_path):
    space = build({"estimator.beta": F}, [])
    url = storage_url(None, tmp_path)
    study = open_study(url, "s", space, "tpe", 0, 8)
    trials = [study.ask(fixed_distributions=space.dims) for _ in range(4)]
    outcomes = [("finished", (0.3, 0.5, 0.4)), ("diverged", (0.2,)), (None, (0.1,)), ("interrupted", ())]
    for t, (status, accs) in zip(trials, outcomes):
        t.set_user_attr("job_dir", str(tmp_path / str(t.number)))
        _write_job(tmp_path / str(t.number), status, accs)
    # the driver died here: all 4 trials are RUNNING in the storage; a new driver opens the same study
    study = open_study(url, "s", space, "tpe", 0, 8)
    assert recover(study, "best_test_acc") == (2, 2)
    got = study.get_trials()
    assert [t.state for t in got[:4]] == [TrialState.COMPLETE] + [TrialState.FAIL] * 3
    assert got[0].value == 0.5  # the best test accuracy in its metrics.jsonl
    assert got[1].user_attrs["status"] == "diverged" and not got[1].user_attrs.get("abandoned")
    assert got[2].user_attrs["abandoned"] and got[3].user_attrs["abandoned"]
    assert counted(study) == 2
    # the two abandoned trials' parameters run again, first
    again = [study.ask(fixed_distributions=space.dims) for _ in range(2)]
    assert [a.params for a in again] == [trials[2].params, trials[3].params]
    assert [a.user_attrs["retry_of"] for a in again] == [2, 3]
    # a new trial is a new draw: the resumed sampler (same seed) does not replay the first driver's
    assert study.ask(fixed_distributions=space.dims).params not in [t.params for t in trials]
    # another search space on the same study is refused
    with pytest.raises(SearchConfigError, match="made with another search space .differs in: estimator.beta"):
        open_study(url, "s", build({"estimator.beta": {**F, "high": 0.9}}, []), "tpe", 0, 8)


def _study(sweep: Path, name="layer_lrs"):
    return optuna.load_study(study_name=name, storage=storage_url(None, sweep))


def _finished_jobs(sweep: Path):
    return {int(p.parent.name): p.stat().st_mtime_ns for p in sweep.glob("*/job_result.json")}


@pytest.mark.slow
def test_a_killed_search_resumes_without_rerunning_its_trials_and_survives_a_diverging_trial(tmp_path):
    sweep = tmp_path / "sweep"
    # layer_lrs with the output layer's rate a choice: 1e38 overflows the cross-entropy read-out (diverges)
    args = ["+search=layer_lrs", "hydra/launcher=local", "hydra.launcher.gpus_per_node=0", *TINY, "task=digits",
            "loss=cel", "optimizer.lrs.2=choice(0.05,1e38)", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
            "hydra.sweeper.seed=2", f"hydra.sweep.dir={sweep}"]
    cmd = [sys.executable, str(ROOT / "launch.py"), "-m"] + args
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(tmp_path / "first.log", "w") as log:
        # its own process group: the kill takes the driver and its local jobs, as when a machine goes down
        driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 400
            while len(_finished_jobs(sweep)) < 3:
                assert driver.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
                time.sleep(0.2)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    before = _finished_jobs(sweep)
    first = _study(sweep).get_trials()
    assert len(before) >= 3 and len(first) >= 4

    p = _launch(args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    trials = _study(sweep).get_trials()
    ended = [t for t in trials if not t.user_attrs.get("abandoned")]
    assert len(ended) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    # the jobs that had ended were not run again: same result files, no launch line for them, trials
    # settled from their dirs; the second driver launched only new trial numbers
    assert {n: m for n, m in _finished_jobs(sweep).items() if n in before} == before
    launched = [int(line.split("#")[1].split(":")[0]) for line in (p.stdout + p.stderr).splitlines()
                if "\t#" in line]
    assert launched and min(launched) >= len(first), p.stderr[-3000:]
    for n in before:
        assert trials[n].state != TrialState.RUNNING and not trials[n].user_attrs.get("abandoned")
    # an abandoned trial (its job killed with the driver) ran again with its own parameters
    for t in trials:
        if t.user_attrs.get("abandoned"):
            assert t.number not in before
            assert [r.params for r in trials if r.user_attrs.get("retry_of") == t.number] == [t.params]
    # each completed trial's value is its job's own best test accuracy; the diverged ones failed
    statuses = set()
    for t in ended:
        job = Path(t.user_attrs["job_dir"])
        assert job == sweep / str(t.number)
        m = read_metrics(job)
        if t.params["optimizer.lrs.2"] == 1e38:
            assert t.state == TrialState.FAIL and t.user_attrs["status"] == "diverged", t.user_attrs
            assert any(r.get("status") == "diverged" for r in m)
        else:
            assert t.state == TrialState.COMPLETE and t.value == max(r["test_acc"] for r in m)
            assert OmegaConf.load(job / ".hydra" / "config.yaml").optimizer.lrs == [
                t.params[f"optimizer.lrs.{i}"] for i in range(3)]
        statuses.add(t.state)
    assert statuses == {TrialState.COMPLETE, TrialState.FAIL}, "seed 2 samples both 0.05 and 1e38"
    # the sweep root: best parameters, the summary of every job
    best = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    complete = [t for t in ended if t.state == TrialState.COMPLETE]
    top = max(complete, key=lambda t: (t.value, -t.number))
    assert best["best_value"] == max(r["test_acc"] for r in read_metrics(sweep / str(top.number)))
    assert best["best_trial"] == top.number and best["best_params"] == top.params
    assert best["best_job_dir"] == str(sweep / str(top.number))
    assert best["trials"] == {"complete": len(complete), "failed": 6 - len(complete),
                              "abandoned": len(trials) - 6}
    rows = {r["job"]: r for r in _summary_rows(sweep)}
    for t in ended:
        assert rows[str(t.number)]["status"] == ("finished" if t.state == TrialState.COMPLETE else "diverged")
    assert "[eqprop] sweep summary:" in p.stdout


def _summary_rows(sweep: Path):
    import csv

    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_a_trial_that_does_not_compose_fails_alone_and_the_search_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    # Hydra's basic launcher (trials in-process, one after another); seed 0 draws no_such_model, mlp, no_such_model
    p = _launch(["+search=betas_t", *TINY, "task=digits", "estimator.beta=0.5",
                 "model=choice(mlp,no_such_model)", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=3",
                 "hydra.sweeper.seed=0", f"hydra.sweep.dir={sweep}"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    trials = _study(sweep, "betas_t").get_trials()
    assert [t.params["model"] for t in trials] == ["no_such_model", "mlp", "no_such_model"]
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL]
    for t in (trials[0], trials[2]):
        assert t.user_attrs["status"] == "config error" and "no_such_model" in t.user_attrs["error"]
        assert not (sweep / str(t.number)).exists()  # never launched
    assert trials[1].value == max(r["test_acc"] for r in read_metrics(sweep / "1"))
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_trial == 1 and best.trials.failed == 2
