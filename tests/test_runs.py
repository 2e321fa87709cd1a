"""eqprop.runs: the one set of rules by which the engine, the report and the sweep summary read a run's
metrics.jsonl, and the sweep's job list rebuilt without Hydra's internals (checked against them)."""
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the reference, in the test only
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from eqprop.runs import family, parse_metrics, read_metrics, reconcile_metrics
from eqprop.sweep_summary import expected_jobs
from tests.launch_utils import ROOT


def line(epoch, status="ok", **extra):
    return json.dumps({"epoch": epoch, "status": status, **extra})


def test_metrics_lines_one_rule_torn_redone_and_resumed_past_a_divergence():
    text = "\n".join([line(1, test_acc=0.5), "5", "[1, 2]", '{"status": "ok"}', line(2, test_acc=0.4),
                      line(2, test_acc=0.7),                  # a requeue redid epoch 2: its last line counts
                      line(3, "diverged", batch=4, non_finite=["train_loss"]),
                      '{"epoch": 3, "status": "ok", "test_a'])  # torn by a kill mid-write
    m = parse_metrics(text)
    assert [(e["epoch"], e["test_acc"]) for e in m.epochs] == [(1, 0.5), (2, 0.7)]
    assert m.problem["status"] == "diverged" and m.problem["batch"] == 4
    assert (m.best_test_acc, m.final_test_acc, m.last_epoch) == (0.7, 0.7, 2)
    resumed = parse_metrics(text + "\n" + line(3, test_acc=0.6))  # `resume=` with a lower lr got past it
    assert resumed.problem is None and resumed.last_epoch == 3 and resumed.final_test_acc == 0.6
    assert parse_metrics("").epochs == [] and parse_metrics("").best_test_acc is None


def test_reconcile_appends_what_the_file_lacks_and_closes_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = line(1, test_acc=0.5) + "\n"
    path.write_text(first + '{"epoch": 2, "sta')   # killed while writing epoch 2's line
    history = [json.loads(line(e, test_acc=e / 10)) for e in (1, 2, 3)]
    reconcile_metrics(path, history)
    text = path.read_text()
    assert text.startswith(first + '{"epoch": 2, "sta\n')  # never rewritten, only appended to
    assert [e["epoch"] for e in read_metrics(tmp_path).epochs] == [1, 2, 3]
    assert read_metrics(tmp_path).epochs[0]["test_acc"] == 0.5  # the line already there, not the history's
    reconcile_metrics(path, history)
    assert path.read_text() == text  # nothing missing: nothing appended
    reconcile_metrics(tmp_path / "new.jsonl", history[:1])
    assert read_metrics(tmp_path / "nowhere") is None
    assert (tmp_path / "new.jsonl").read_text() == json.dumps(history[0]) + "\n"


def test_family():
    assert family("bptt") == "BPTT"
    assert {family(e) for e in ("one_sided", "random_sign", "symmetric", "n_point", "holomorphic", "cep")} == {"EP"}


@pytest.mark.parametrize("sweep, command_line", [
    ("t1_t2", []), ("betas", []), ("ep_vs_bptt", []), ("layer_lrs", []),
    # a key of the sweep given again on the command line, a new swept key, a range, an appended key
    ("t1_t2", ["dynamics.T1=6", "estimator.beta=0.1,0.2", "seed=range(2)", "+task.limit_train=64"]),
])
def test_expected_jobs_are_the_basic_sweepers_jobs(tmp_path, sweep, command_line):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [f"+sweep={sweep}"], return_hydra_config=True)
    task = [f"+sweep={sweep}"] + command_line
    cfg.hydra.overrides.task = task  # as Hydra records a multirun's command line
    OmegaConf.save(cfg, tmp_path / "multirun.yaml")
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    want = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params + task), None)[0]
    got = expected_jobs(tmp_path)
    assert got == want and len(got) > 1
