"""The real launch.py: the default job's accuracy, the run's files, resume, evaluate, gducheck."""
import json
import resource

import pytest
import torch

from tests.launch_utils import TINY, launch_cli, read_metrics, run_inprocess


@pytest.mark.slow
def test_default_run_reaches_90_percent_in_under_3_minutes(tmp_path):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = launch_cli(["device=cpu"], run_dir=tmp_path, timeout=900, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds, not wall time: a loaded CI machine stretches wall time, not the work done.
    # "3 minutes on 2 cores" is a budget of 360 CPU seconds.
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    m = read_metrics(tmp_path)
    assert m[-1]["epoch"] == len(m) >= 1
    best = max(r["test_acc"] for r in m)
    assert best >= 0.90, (best, p.stdout[-2000:])
    assert cpu < 360, cpu


def test_run_writes_its_files(tmp_path):
    run_inprocess(TINY + ["epochs=2"], tmp_path)
    m = read_metrics(tmp_path)
    assert [r["epoch"] for r in m] == [1, 2]
    for r in m:
        assert {"epoch", "train_acc", "test_acc", "train_loss", "seconds"} <= set(r)
        assert r["seconds"] > 0
    for f in ["model.pt", "checkpoint.pt", "final_model.pt", "accuracy.png", "activity.png"]:
        assert (tmp_path / f).stat().st_size > 0, f
    best = torch.load(tmp_path / "model.pt", weights_only=True)
    assert best["test_acc"] == max(r["test_acc"] for r in m)


@pytest.mark.parametrize("every,draws", [(30.0, [1, 4]), (0.0, [1, 2, 3, 4])])
def test_figures_are_redrawn_at_most_every_plot_every_s_and_after_the_last_epoch(tmp_path, monkeypatch, every, draws):
    from eqprop import engine
    seen = []
    monkeypatch.setattr(engine, "PLOT_EVERY_S", every)
    monkeypatch.setattr(engine, "plot_accuracy", lambda history, path, **kw: seen.append(history[-1]["epoch"]))
    run_inprocess(TINY + ["epochs=4"], tmp_path)
    assert seen == draws


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    # random sign: the estimator's RNG must resume too. seed=1 draws both signs in these 6 batches
    # (seed 0 happens to draw +1 six times)
    over = TINY + ["model=cnn", "estimator=random_sign", "seed=1"]
    run_inprocess(over + ["epochs=3"], full)
    run_inprocess(over + ["epochs=1"], part)
    run_inprocess(over + ["epochs=3", f"resume={part}"], part)
    a, b = read_metrics(full), read_metrics(part)
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for k in ("train_acc", "test_acc", "train_loss", "test_loss"):
            assert ra[k] == rb[k], (k, ra, rb)
    wa = torch.load(full / "final_model.pt", weights_only=True)["model"]
    wb = torch.load(part / "final_model.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the signs drawn were not all +1: the same run with one-sided EP trains to other weights
    one = tmp_path / "one_sided"
    run_inprocess(TINY + ["model=cnn", "estimator=one_sided", "seed=1", "epochs=3"], one)
    wo = torch.load(one / "final_model.pt", weights_only=True)["model"]
    assert not all(torch.equal(wa[k], wo[k]) for k in wa)


def test_evaluate_appends_accuracies_to_the_run(tmp_path):
    launch_cli(TINY + ["epochs=2"], run_dir=tmp_path, check=True)
    p = launch_cli(["mode=evaluate", f"load_path={tmp_path}", "device=cpu", "task.limit_train=64",
                    "task.limit_test=50", "dynamics.T1=6"], check=True)
    lines = [json.loads(s) for s in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    best = max(r["test_acc"] for r in read_metrics(tmp_path))
    assert lines[0]["test_acc"] == pytest.approx(best)
    assert "test acc" in p.stdout
    # the training config of the run is untouched by the evaluation
    assert "mode: train" in (tmp_path / ".hydra" / "config.yaml").read_text()
    assert "mode: evaluate" in (tmp_path / ".hydra-evaluate-1" / "config.yaml").read_text()


def test_gducheck_writes_json_and_figure(tmp_path):
    """mode=gducheck on the untrained float64 MLP: EP's updates track BPTT's gradients, symmetric
    EP (bias O(beta^2)) far more closely than one-sided EP (O(beta)); both are reported by one run."""
    run_inprocess(["mode=gducheck", "task.limit_train=64", "task.batch_size=8", "dynamics.T1=20",
                   "dynamics.T2=5", "estimator.beta=0.05", "device=cpu", "dtype=float64"], tmp_path)
    g = json.loads((tmp_path / "gdu.json").read_text())
    # the default estimator is symmetric: its metrics, and the one-sided ones at +beta and -beta
    assert set(g["metrics"]) == {"one_sided(+beta)", "one_sided(-beta)", "symmetric"}
    assert g["checked"] == "symmetric" and g["betas"] == [0.05, -0.05]
    assert (g["T1"], g["T2"], g["n_examples"]) == (20, 5, 20)  # gdu.n_examples: the original's 20
    sym, one = g["metrics"]["symmetric"], g["metrics"]["one_sided(+beta)"]
    assert {"synapses.0.weight", "synapses.0.bias", "synapses.1.weight", "synapses.1.bias", "neurons_0",
            "neurons_1"} <= set(sym)
    for key, m in sym.items():
        if key.startswith("synapses."):
            assert m["rmse"] < 0.05 and m["sign_error"] < 0.1, (key, m)
            assert one[key]["rmse"] > 3 * m["rmse"], (key, m, one[key])
        else:
            # neurons: signs only; EP's state updates carry the activation's slope, BPTT's gradients do not
            assert m["sign_error"] < 0.01, (key, m)
    assert (tmp_path / "gdu.png").stat().st_size > 10_000
    assert (tmp_path / "bars.png").stat().st_size > 0 and (tmp_path / "gdu_traces.pt").exists()


def test_dynamics_options_reach_the_run_and_its_logged_steps(tmp_path):
    """async + tol stop the phases early (steps logged per epoch, under the caps); check_every
    rounds the stop up to its multiples; the unbatched nudged phases give the same numbers as the
    batched ones."""
    common = TINY[:4] + ["device=cpu", "dynamics.T1=40", "dynamics.T2=20"]
    early = ["dynamics.update=async", "dynamics.tol=1e-3"]
    m1 = read_metrics(_run(common + early + ["dynamics.check_every=1"], tmp_path / "a"))
    m4 = read_metrics(_run(common + early + ["dynamics.check_every=4"], tmp_path / "b"))
    assert 0 < m1[-1]["steps_free"] < 40 and 0 < m1[-1]["steps_nudged"] < 20
    assert m1[-1]["steps_free"] <= m4[-1]["steps_free"] < m1[-1]["steps_free"] + 4
    batched = read_metrics(_run(common, tmp_path / "c"))
    separate = read_metrics(_run(common + ["dynamics.batch_nudged=false"], tmp_path / "d"))
    assert batched[-1]["steps_free"] == 40 and batched[-1]["steps_nudged"] == 20
    assert abs(batched[-1]["train_loss"] - separate[-1]["train_loss"]) < 1e-5
    assert batched[-1]["test_acc"] == separate[-1]["test_acc"]


def _run(overrides, run_dir):
    run_inprocess(overrides, run_dir)
    return run_dir
