"""logger=wandb on real offline W&B runs made by the training job, read back with `wandb leet inspect`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch_utils import TINY, compose_cfg, launch_cli, read_metrics, run_inprocess

WANDB = str(Path(sys.executable).parent / "wandb")
SMALL = [a for a in TINY if not a.startswith("epochs=")] + ["task=digits"]


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    """No W&B credentials or mode from the developer's machine leak into the runs."""
    for k in list(os.environ):
        if k.startswith("WANDB_"):
            monkeypatch.delenv(k)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    return home


def offline_runs(run_dir: Path):
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))


def records(wandb_run: Path):
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(wandb_run)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def inspect_summary(wandb_run: Path) -> dict:
    out = subprocess.run([WANDB, "leet", "inspect", "--summary", "--json", str(wandb_run)], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return json.loads(out)


def history(wandb_run: Path, key="epoch"):
    return [r["history"]["item"] for r in records(wandb_run) if r["type"] == "history" and key in r["history"]["item"]]


def run_record(wandb_run: Path) -> dict:
    return next(r["run"] for r in records(wandb_run) if r["type"] == "run")


def test_training_logs_config_history_summary_group_and_a_requeue_continues_the_run(tmp_path, no_login):
    # mode=auto without a login: offline; vf_mlp has forward/backward angles; gdu.every logs GDU metrics
    over = SMALL + ["logger=wandb", "loss=cel", "model=vf_mlp", "estimator=random_sign", "seed=3",
                    "gdu.every=2", "gdu.n_examples=2", "logger.tags=[smoke]"]
    p = launch_cli(over + ["epochs=2"], run_dir=tmp_path, check=True, timeout=600)
    [first] = offline_runs(tmp_path)
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert first.name.endswith(run_id), (first, run_id)

    run = run_record(first)
    assert run["run_group"] == "digits-vf_mlp-cel" and run["job_type"] == "random_sign"
    assert run["display_name"] == "random_sign-seed3"
    assert {"smoke", "random_sign", "EP", "digits", "vf_mlp", "cel"} <= set(run["tags"])
    s = inspect_summary(first)
    assert s["state"] == "finished" and s["exit_code"] == 0
    assert s["config"]["estimator"]["name"] == "random_sign" and s["config"]["seed"] == 3
    assert s["config"]["model"]["archi"] == [64, 512, 256, 10]          # resolved, not ${task.input_dim}
    assert s["config"]["eqprop"]["family"] == "EP"

    metrics = read_metrics(tmp_path)
    rows = history(first)
    assert [r["epoch"] for r in rows] == [1, 2]
    for m, r in zip(metrics, rows):
        assert r["train/acc"] == pytest.approx(m["train_acc"]) and r["test/acc"] == pytest.approx(m["test_acc"])
        assert r["train/loss"] == pytest.approx(m["train_loss"]) and r["test/loss"] == pytest.approx(m["test_loss"])
        assert r["time/epoch_seconds"] == pytest.approx(m["seconds"])
        assert r["steps/free"] == m["steps_free"] == 6 and r["steps/nudged"] == m["steps_nudged"] == 3
        assert [r[f"lr/layer_{i}"] for i in range(3)] == pytest.approx(m["lrs"])
        assert r["angle/synapse_1"] == pytest.approx(m["angles"][0])
        assert r["activity/layer_1._type"] == "histogram" and sum(r["activity/layer_1.values"]) > 0
    best = max(m["test_acc"] for m in metrics)
    assert s["summary"]["best_test_acc"] == pytest.approx(best)
    assert s["summary"]["test/acc"]["max"] == pytest.approx(best)
    assert s["summary"]["status"] == "finished"
    step_metrics = {r["metric"].get("glob_name") or r["metric"].get("name"): r["metric"].get("step_metric")
                    for r in records(first) if r["type"] == "metric"}
    assert step_metrics["test/*"] == step_metrics["train/*"] == step_metrics["lr/*"] == "epoch"
    gdu = history(first, "gdu_step")
    gdu_lines = (tmp_path / "gdu_train.jsonl").read_text().splitlines()
    assert len(gdu) == len(gdu_lines) == 2                   # 64 examples / 32 per batch, every 2nd batch, 2 epochs
    assert gdu[0]["gdu_rmse/synapses.0.weight"] == pytest.approx(
        json.loads(gdu_lines[0])["metrics"]["synapses.0.weight"]["rmse"])

    # the requeued job lands in the same dir with more epochs: same W&B run id, continued history
    launch_cli(over + ["epochs=3"], run_dir=tmp_path, check=True, timeout=600)
    second = [r for r in offline_runs(tmp_path) if r != first]
    assert len(second) == 1 and second[0].name.endswith(run_id)
    assert run_record(second[0])["resume"] is True
    assert [r["epoch"] for r in history(second[0])] == [3]
    # disjoint W&B steps: the segments sync one after the other without overwriting each other
    assert min(r["_step"] for r in history(second[0], "_step")) > max(r["_step"] for r in history(first, "_step"))
    assert int((tmp_path / "wandb_step").read_text()) == max(r["_step"] for r in history(second[0], "_step"))
    s2 = inspect_summary(second[0])
    assert s2["run_id"] == run_id and s2["state"] == "finished"
    assert s2["summary"]["epochs"] == 3
    assert s2["summary"]["best_test_acc"] == pytest.approx(max(m["test_acc"] for m in read_metrics(tmp_path)))
    assert "[eqprop] warning" not in p.stderr               # offline was chosen, nothing failed


def test_a_crashed_job_of_a_multirun_is_marked_failed_and_the_sweep_goes_on(tmp_path, no_login):
    # lr=1e38 with the cross-entropy read-out overflows in the first epoch: job 0 diverges
    p = launch_cli(["-m"] + SMALL + ["epochs=1", "loss=cel", "logger=wandb", "logger.mode=offline",
                                     "optimizer.lr=1e38,0.05", f"hydra.sweep.dir={tmp_path}"], timeout=600)
    assert "diverged" in p.stdout + p.stderr
    [bad] = offline_runs(tmp_path / "0")
    [good] = offline_runs(tmp_path / "1")
    sb, sg = inspect_summary(bad), inspect_summary(good)
    assert sb["state"] == "failed" and sb["exit_code"] == 3 and sb["summary"]["status"] == "diverged"
    assert sg["state"] == "finished" and sg["exit_code"] == 0 and sg["summary"]["epochs"] == 1
    assert sb["run_id"] != sg["run_id"]
    assert [r["epoch"] for r in history(good)] == [1]


def test_an_unreachable_server_falls_back_to_offline_and_the_run_completes(tmp_path, no_login):
    env = {"WANDB_API_KEY": "a" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}   # logged in, nobody listening
    p = launch_cli(SMALL + ["epochs=1", "logger=wandb", "logger.init_timeout=5"], run_dir=tmp_path, env=env,
                   timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "W&B is unreachable" in p.stderr and "logging offline instead" in p.stderr
    assert len(read_metrics(tmp_path)) == 1
    [off] = offline_runs(tmp_path)
    s = inspect_summary(off)
    assert s["run_id"] == (tmp_path / "wandb_run_id").read_text().strip()   # sync later continues that id
    assert s["state"] == "finished" and s["summary"]["epochs"] == 1


def test_gducheck_logs_its_metrics_to_its_own_run(tmp_path, no_login):
    run_inprocess(["mode=gducheck", "task=digits", "task.limit_train=64", "task.batch_size=8", "dynamics.T1=10",
                   "dynamics.T2=4", "device=cpu", "logger=wandb", "logger.mode=offline"], tmp_path)
    [off] = offline_runs(tmp_path)
    assert run_record(off)["job_type"] == "gducheck-symmetric"
    assert not (tmp_path / "wandb_run_id").exists()        # checks never continue a training run's W&B run
    [row] = history(off, "gdu_step")
    g = json.loads((tmp_path / "gdu.json").read_text())
    metrics = g["metrics"][g["checked"]]  # the checked (symmetric) estimate's metrics go to W&B
    for key, m in metrics.items():
        assert row[f"gdu_rmse/{key}"] == pytest.approx(m["rmse"])
        assert row[f"gdu_sign_error/{key}"] == pytest.approx(m["sign_error"])


def test_mode_disabled_writes_no_wandb_files(tmp_path, no_login):
    run_inprocess(TINY + ["task=digits", "logger=wandb", "logger.mode=disabled"], tmp_path)
    assert len(read_metrics(tmp_path)) == 1
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_run_id").exists()


@pytest.mark.parametrize("override, message", [
    ("logger.mode=onlin", "logger.mode='onlin' is not known; expected one of auto, online, offline, disabled"),
    # the logger schema (eqprop.config.LoggerConfig) words it like every other unknown key
    ("+logger.projet=x", "unknown config key logger.projet; did you mean logger.project?"),
    ("logger.init_timeout=0", "logger.init_timeout=0 must be a number of seconds > 0"),
    ("logger.tags=[a,'']", "logger.tags=['a', ''] must be a list of non-empty strings"),
])
def test_bad_logger_settings_stop_before_any_compute_with_exit_code_2(tmp_path, capsys, override, message):
    from eqprop.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(compose_cfg(TINY + ["task=digits", "logger=wandb", override]), tmp_path)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "wandb").exists()


def test_a_logger_setting_of_the_wrong_type_is_refused_by_launch_with_exit_code_2(tmp_path, no_login):
    # refused while Hydra composes (the logger schema), before eqprop's code runs: launch.py words it
    run_dir = tmp_path / "run"
    p = launch_cli(TINY + ["task=digits", "logger=wandb", "logger.tags=smoke"], run_dir=run_dir, timeout=120)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "logger.tags='smoke' must be a list" in p.stderr and "Traceback" not in p.stderr
    assert not run_dir.exists()
