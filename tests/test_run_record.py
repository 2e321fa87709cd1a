"""A run's record on real launch.py processes: a refused command changes nothing on disk; resume
continues the run with its own settings, says and records what the command line changed, and keeps
the record of every earlier command; the report groups a resumed run under its own setting; every
run says where it is, on the console and in its launch.log."""
import hashlib
import json

import pytest
import yaml

from tests.fault_utils import ONE_THREAD
from tests.launch_utils import TINY, launch_cli, read_metrics

pytestmark = pytest.mark.slow

SMALL = TINY + ["task=digits"]
SETTINGS = ["optimizer.lr=0.05", "estimator.beta=0.3", "loss=cel"]


def _cli(args, **kw):
    return launch_cli(args, timeout=300, env=ONE_THREAD, **kw)


def _ok(p):
    assert p.returncode == 0, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    return p


def _snapshot(root):
    """Every file and dir under root: path -> sha1 of its bytes (None for a dir)."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def _yaml(path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished 1-epoch cel run of non-default lr and beta, trained by the real launch.py."""
    run = tmp_path_factory.mktemp("trained") / "run"
    p = _ok(_cli(SMALL + SETTINGS, run_dir=run))
    return run, p


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_refused_command_leaves_every_file_of_the_run_byte_identical(trained, tmp_path):
    run = _copy(trained[0], tmp_path / "run")
    before = _snapshot(run)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "launch.log"} <= set(before)
    refused = [
        ([f"resume={run}", "loss=mse", "epochs=3"], "different architecture"),         # refused by the checkpoint
        ([f"resume={run}", "epochs=3", "+model.chanels=[8]"], "did you mean model.channels?"),  # by the config
        ([f"resume={run}", "epochs=3", "device=cuda"], "no CUDA GPU"),                  # by the machine
        (["mode=evaluate", f"load_path={run}", "dynamics.T1=0"], "dynamics.T1=0"),      # an evaluation
    ]
    for args, message in refused:
        p = _cli(args)
        assert p.returncode == 2 and message in p.stderr, (args, p.returncode, p.stderr[-2000:])
        assert _snapshot(run) == before, args  # nothing added, removed or rewritten


def test_a_refused_resume_never_removes_a_dir_that_was_there_before(trained, tmp_path):
    # a run that crashed before its first checkpoint: Hydra's copy of its config and its log, nothing else
    crashed = tmp_path / "crashed"
    (crashed / ".hydra").mkdir(parents=True)
    for f in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (crashed / ".hydra" / f).write_bytes((trained[0] / ".hydra" / f).read_bytes())
    (crashed / "launch.log").write_text("[2026-01-01 00:00:00,000][INFO][eqprop.app] train: run dir ...\n")
    before = _snapshot(crashed)
    p = _cli([f"resume={crashed}", "epochs=2"])
    assert p.returncode == 2 and "no checkpoint.pt there" in p.stderr, p.stderr[-2000:]
    assert _snapshot(crashed) == before

    # and a dir that did not exist leaves no empty folders behind
    p = _cli([f"resume={tmp_path / 'does' / 'not' / 'exist'}", "epochs=2"])
    assert p.returncode == 2, p.stderr[-2000:]
    assert not (tmp_path / "does").exists()


def test_resume_with_only_epochs_continues_the_run_with_its_own_settings(trained, tmp_path):
    run = _copy(trained[0], tmp_path / "run")
    first = _snapshot(run / ".hydra")
    p = _ok(_cli([f"resume={run}", "epochs=2"]))
    assert "changed:" not in p.stdout + p.stderr  # nothing but epochs was asked for
    effective = _yaml(run / ".hydra-resume-1" / "effective.yaml")
    assert effective["estimator"]["beta"] == 0.3 and effective["optimizer"]["lr"] == 0.05
    assert effective["loss"]["name"] == "cel" and effective["task"]["limit_train"] == 64
    assert effective["epochs"] == 2 and effective["dynamics"]["T1"] == 6
    m = read_metrics(run)
    assert [r["epoch"] for r in m] == [1, 2] and set(m[1]["lrs"]) == {0.05}
    # the first command's record is untouched, this one's is beside it
    assert _snapshot(run / ".hydra") == first
    assert _yaml(run / ".hydra-resume-1" / "overrides.yaml") == [f"resume={run}", "epochs=2"]

    # the resumed run is the very run that 2 uninterrupted epochs of those settings give: beta, lr,
    # loss, data and dynamics all held
    full = tmp_path / "full"
    _ok(_cli(SMALL + SETTINGS + ["epochs=2"], run_dir=full))
    for a, b in zip(read_metrics(full), m):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_an_explicit_change_is_said_and_recorded_and_no_earlier_record_is_lost(trained, tmp_path):
    run = _copy(trained[0], tmp_path / "run")
    first_overrides = (run / ".hydra" / "overrides.yaml").read_text()
    p = _ok(_cli([f"resume={run}", "epochs=2", "optimizer.lr=0.01"]))
    assert "changed: optimizer.lr 0.05 -> 0.01" in p.stderr
    rec = _yaml(run / ".hydra-resume-1" / "resume.yaml")
    assert rec["changed"]["optimizer.lr"] == {"from": 0.05, "to": 0.01}
    assert rec["overrides"] == [f"resume={run}", "epochs=2", "optimizer.lr=0.01"] and rec["date"]
    assert read_metrics(run)[-1]["lrs"] == [0.01, 0.01]
    # a second resume gets its own record, and keeps the changed lr (the run's settings now)
    p = _ok(_cli([f"resume={run}", "epochs=3"]))
    assert "changed:" not in p.stderr
    assert _yaml(run / ".hydra-resume-2" / "effective.yaml")["optimizer"]["lr"] == 0.01
    assert read_metrics(run)[-1]["lrs"] == [0.01, 0.01]
    assert _yaml(run / ".hydra-resume-1" / "resume.yaml") == rec
    assert (run / ".hydra" / "overrides.yaml").read_text() == first_overrides
    log = (run / "launch.log").read_text()
    assert "changed: optimizer.lr 0.05 -> 0.01" in log
    assert [ln.split("] ")[-1].split("  ")[0] for ln in log.splitlines() if "] epoch " in ln] == \
        ["epoch 1/1", "epoch 2/2", "epoch 3/3"]


def test_a_requeued_job_continues_with_its_own_settings_and_keeps_its_first_record(trained, tmp_path):
    run = _copy(trained[0], tmp_path / "run")
    first = _snapshot(run / ".hydra")
    p = _ok(_cli(SMALL + SETTINGS, run_dir=run))  # the very same command again, in the same dir
    assert "changed:" not in p.stderr
    assert _snapshot(run / ".hydra") == first
    assert _yaml(run / ".hydra-resume-1" / "effective.yaml")["estimator"]["beta"] == 0.3
    assert [r["epoch"] for r in read_metrics(run)] == [1]  # its one epoch was done already


def test_every_run_says_where_it_is_and_its_log_holds_the_epoch_lines(trained, tmp_path):
    run, p = trained
    assert f"train: run dir {run}" in p.stdout and f"train finished: run dir {run}" in p.stdout
    log = (run / "launch.log").read_text()
    assert f"train: run dir {run}" in log and "epoch 1/1  train acc" in log
    run = _copy(run, tmp_path / "run")
    p = _ok(_cli(["mode=evaluate", f"load_path={run}", "task=digits", "device=cpu", "dynamics.T1=6"]))
    assert f"evaluate: run dir {run}" in p.stdout and f"evaluate finished: run dir {run}" in p.stdout
    assert f"evaluate finished: run dir {run}" in (run / "launch.log").read_text()
    assert (run / ".hydra-evaluate-1" / "config.yaml").is_file()


def test_evaluate_measures_a_run_on_the_task_it_trained_on(trained, tmp_path):
    run = _copy(trained[0], tmp_path / "run")
    # no task= on the command line: the run's own (digits, its test limit), not the default mnist5k
    p = _ok(_cli(["mode=evaluate", f"load_path={run}", "device=cpu", "dynamics.T1=6"]))
    assert f"task=digits: the task {run} trained on" in p.stdout + p.stderr
    line = json.loads((run / "evaluations.jsonl").read_text().splitlines()[-1])
    trained_line = read_metrics(run)[-1]
    assert line["test_acc"] == trained_line["test_acc"]  # the same 50 test digits, the same T1
    assert line["test_loss"] == pytest.approx(trained_line["test_loss"], rel=1e-5)
    # what the command line sets of task still holds; a task the model cannot take is refused
    _ok(_cli(["mode=evaluate", f"load_path={run}", "device=cpu", "dynamics.T1=6", "task.limit_test=20"]))
    assert len((run / "evaluations.jsonl").read_text().splitlines()) == 2
    p = _cli(["mode=evaluate", f"load_path={run}", "device=cpu", "task=mnist5k"])
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"does not match the input of task=mnist5k (784 = 1x28x28); the model is the one {run} trained: " \
           "leave task= out to use its own task" in p.stderr


def test_the_report_and_the_sweep_summary_read_a_resumed_runs_own_settings(tmp_path):
    from eqprop.report import make_report
    from eqprop.sweep_summary import job_rows

    sweep = tmp_path / "sweep"
    _ok(_cli(["-m"] + SMALL + ["estimator.beta=0.3,0.5", f"hydra.sweep.dir={sweep}"]))
    _ok(_cli([f"resume={sweep / '0'}", "epochs=2"]))
    _ok(_cli([f"resume={sweep / '1'}", "epochs=2", "optimizer.momentum=0.5"]))
    rows = [w for ws in make_report([sweep], tmp_path / "out")["rows"].values() for w in ws]
    by_label = {w.label: w for w in rows}
    assert set(by_label) == {"symmetric (estimator.beta=0.3, optimizer.momentum=0.0)",
                             "symmetric (estimator.beta=0.5, optimizer.momentum=0.5)"}, by_label
    for w in rows:
        assert len(w.ok) == 1 and not w.failed and len(w.ok[0].history) == 2
    summary = {r["job"]: r["all_overrides"] for r in job_rows(sweep)}
    assert "estimator.beta=0.3" in summary["0"] and "epochs=2" in summary["0"]
    assert "optimizer.momentum=0.5" in summary["1"] and "estimator.beta=0.5" in summary["1"]
