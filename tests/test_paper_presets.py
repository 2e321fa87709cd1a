"""The paper, reproducible by name: every `+experiment=` preset against the paper's settings, the
GDU study over beta, the GDU check during training, and `mode=evaluate` through its preset.

The expected values are written out here from shared/reference/paper.md and the original README's
command lines, not read from the YAML, so a preset that drifts from the paper fails.
"""
import json
import math

import pytest
import torch

from eqprop.config import ConfigError, from_dict
from tests.helpers import random_batch, small_net
from tests.launch_utils import ROOT, TINY, compose_cfg, launch_cli, read_metrics, run_inprocess

# The CIFAR-10 command lines share everything but the estimator, loss, T2, beta, model and dropout.
CIFAR10 = dict(
    task="cifar10", channels=[128, 256, 512, 512], kernels=[3, 3, 3, 3], strides=[1, 1, 1, 1],
    paddings=[1, 1, 1, 0], pools="mmmm", fc=[10], activation="my_hard_sig", optimizer="sgd",
    lrs=[0.25, 0.15, 0.1, 0.08, 0.05], wds=[3e-4] * 5, momentum=0.9, lr_decay=True, T_max=100, eta_min=1e-5,
    epochs=120, batch_size=128, augment=True, T1=250, dropouts=None, same_update=False, device="cuda:0",
)
DROPOUT = [1.0, 1.0, 1.0, 0.9, 1.0]
# paper.md's table: variant -> (model, estimator, loss, T2, beta, extra)
PAPER = {
    "cnn_mse_one_sided": ("cnn", "one_sided", "mse", 30, 0.5, {}),
    "cnn_mse_random_sign": ("cnn", "random_sign", "mse", 30, 0.5, {}),
    "cnn_mse_symmetric": ("cnn", "symmetric", "mse", 30, 0.5, {}),
    "cnn_mse_bptt": ("cnn", "bptt", "mse", 30, None, {}),
    "cnn_cel_symmetric": ("cnn", "symmetric", "cel", 25, 1.0, {}),
    "cnn_cel_bptt": ("cnn", "bptt", "cel", 25, None, {}),
    "cnn_cel_dropout_symmetric": ("cnn", "symmetric", "cel", 25, 1.0, {"dropouts": DROPOUT}),
    "cnn_cel_dropout_bptt": ("cnn", "bptt", "cel", 25, None, {"dropouts": DROPOUT}),
    "vfcnn_cel_symmetric": ("vf_cnn", "symmetric", "cel", 30, 1.0, {}),
    "vfcnn_cel_symmetric_same_update": ("vf_cnn", "symmetric", "cel", 30, 1.0, {"same_update": True}),
    "vfcnn_cel_bptt": ("vf_cnn", "bptt", "cel", 30, None, {}),
}


def _flat(cfg) -> dict:
    m, t, o, d = cfg.model, cfg.task, cfg.optimizer, cfg.dynamics
    return dict(
        task=t.name, channels=m.channels, kernels=m.kernels, strides=m.strides, paddings=m.paddings,
        pools=m.pools, fc=m.fc, activation=m.activation, optimizer=o.name, lrs=o.lrs, wds=o.wds,
        momentum=o.momentum, lr_decay=o.lr_decay, T_max=o.T_max, eta_min=o.eta_min, epochs=cfg.epochs,
        batch_size=t.batch_size, augment=t.augment, T1=d.T1, dropouts=m.dropouts, same_update=m.same_update,
        device=cfg.device,
    )


def _preset(name, *extra):
    return from_dict(compose_cfg([f"+experiment={name}", *extra]))


def test_every_paper_preset_is_in_the_table():
    files = {p.stem for p in (ROOT / "conf" / "experiment" / "paper").glob("*.yaml")}
    assert files == set(PAPER) | {"evaluate", "gducheck"}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_preset_matches_the_paper(name):
    model, estimator, loss, T2, beta, extra = PAPER[name]
    cfg = _preset(f"paper/{name}")
    expected = dict(CIFAR10, **extra)
    got = _flat(cfg)
    assert {k: got[k] for k in expected} == expected
    assert cfg.mode == "train"
    assert cfg.model.name == model
    assert cfg.estimator.name == estimator
    if beta is not None:  # BPTT has no beta (the original command line gives none)
        assert cfg.estimator.beta == beta
    assert cfg.loss.name == loss
    assert cfg.loss.softmax_readout == (loss == "cel")  # the original --loss 'cel' --softmax
    assert cfg.dynamics.T2 == T2
    assert cfg.gdu.every == 0


@pytest.mark.parametrize("name", ["cnn_cel_symmetric", "vfcnn_cel_symmetric"])
def test_paper_network_builds_with_one_lr_per_layer(name):
    from eqprop.losses import build_loss
    from eqprop.models import build_model

    cfg = _preset(f"paper/{name}")
    net = build_model(cfg.model, build_loss(cfg.loss.name, cfg.loss.softmax_readout), 3, 32)
    groups = net.layer_groups()
    assert len(groups) == len(cfg.optimizer.lrs) == 5
    # 128-256-512-512 conv 3x3, the last one unpadded: 32 -> 16 -> 8 -> 4 -> 1 after the pools
    assert [tuple(g[0].shape) for g in groups] == [(128, 3, 3, 3), (256, 128, 3, 3), (512, 256, 3, 3),
                                                   (512, 512, 3, 3), (10, 512)]
    # the optimiser: one group per layer with the paper's lr and weight decay, momentum 0.9, and the
    # cosine schedule taking every lr to eta_min = 1e-5 at T_max = 100 epochs
    from eqprop.optim import build_optimizer

    opt, sched = build_optimizer(cfg.optimizer, net)
    assert isinstance(opt, torch.optim.SGD)
    assert [g["lr"] for g in opt.param_groups] == CIFAR10["lrs"]
    assert [g["weight_decay"] for g in opt.param_groups] == CIFAR10["wds"]
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [[id(p) for p in g] for g in groups]
    opt.step()  # no gradients: nothing moves; the schedule steps after the optimiser, as in training
    for _ in range(50):
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5 + (lr - 1e-5) / 2 for lr in CIFAR10["lrs"]])
    for _ in range(50):
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5] * 5)


def test_cli_group_overrides_win_over_a_preset():
    cfg = _preset("paper/cnn_cel_symmetric", "estimator=bptt", "device=cpu", "epochs=3")
    assert (cfg.estimator.name, cfg.device, cfg.epochs, cfg.dynamics.T1) == ("bptt", "cpu", 3, 250)


def test_evaluate_and_gducheck_presets():
    ev = _preset("paper/evaluate", "load_path=/some/run")
    assert (ev.mode, ev.task.name, ev.dynamics.T1, ev.task.test_batch_size, ev.task.batch_size) == \
        ("evaluate", "cifar10", 250, 200, 200)
    assert ev.load_path == "/some/run"
    with pytest.raises(ConfigError, match="load_path"):
        _preset("paper/evaluate")
    g = _preset("paper/gducheck")
    assert (g.mode, g.task.name, g.dynamics.T1, g.dynamics.T2, g.estimator.name, g.estimator.beta,
            g.loss.name, g.task.batch_size) == ("gducheck", "cifar10", 250, 15, "symmetric", 0.1, "mse", 128)
    assert g.model.channels == CIFAR10["channels"] and g.gdu.betas is None


def test_mnist_mlp_preset_is_the_check_folders_run():
    cfg = _preset("mnist/mlp")
    assert (cfg.task.name, cfg.model.name, cfg.model.archi, cfg.model.activation) == \
        ("mnist", "mlp", [784, 512, 10], "my_sigmoid")
    assert (cfg.dynamics.T1, cfg.dynamics.T2, cfg.estimator.name, cfg.estimator.beta, cfg.task.batch_size) == \
        (30, 10, "one_sided", 0.1, 50)
    assert (cfg.optimizer.name, cfg.optimizer.lrs, cfg.epochs, cfg.loss.name) == ("adam", [5e-4, 5e-4], 2, "mse")
    assert (cfg.gdu.every, cfg.gdu.n_examples) == (120, 5)  # --check-thm: 10 checks per MNIST epoch


def test_study_presets_compose():
    g = _preset("gdu_study")
    assert g.mode == "gducheck" and g.dtype == "float64" and len(g.gdu.betas) >= 4
    assert g.task.name in ("digits", "mnist5k")  # offline
    for est in ("symmetric", "one_sided", "bptt"):
        s = _preset("mnist5k_cnn_study", f"estimator={est}")
        assert (s.task.name, s.model.name, s.estimator.name, s.estimator.beta) == ("mnist5k", "cnn", est, 1.0)


# ----- the GDU study --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def study():
    from eqprop.gdu_study import gdu_study

    model = small_net(name="mlp", loss="mse", activation="tanh")
    x, y = random_batch(model, n=6)
    return gdu_study(model, x, y, T1=150, T2=20, betas=[0.1, 0.05, 0.025],
                     generator=torch.Generator().manual_seed(0))


def _errors(study, est):
    return [r["rmse_params"] for r in study["rows"] if r["estimator"] == est]


def test_study_orders_one_sided_linear_symmetric_quadratic(study):
    one, sym = _errors(study, "one_sided"), _errors(study, "symmetric")
    # betas ascending: [0.025, 0.05, 0.1]; halving the smallest-but-one beta halves / quarters the error
    assert 1.7 < one[1] / one[0] < 2.3, one
    assert 3.3 < sym[1] / sym[0] < 4.7, sym
    assert all(s < o for s, o in zip(sym, one))
    assert abs(study["fitted_order"]["one_sided"] - 1) < 0.2
    assert abs(study["fitted_order"]["symmetric"] - 2) < 0.3


def test_random_sign_is_one_sided_with_the_drawn_sign(study):
    one = {r["beta"]: r for r in study["rows"] if r["estimator"] == "one_sided"}
    for r in (r for r in study["rows"] if r["estimator"] == "random_sign"):
        assert r["sign"] in (1.0, -1.0)
        if r["sign"] > 0:
            assert r["rmse_params"] == one[r["beta"]]["rmse_params"]
        else:  # -beta: the same first-order bias with the other sign, so about as large
            assert 0.5 < r["rmse_params"] / one[r["beta"]]["rmse_params"] < 2


def test_study_keeps_the_readout_out_of_the_averages():
    from eqprop.gdu_study import gdu_study

    model = small_net(name="mlp", loss="cel", readout=True, activation="tanh")
    x, y = random_batch(model, n=4)
    s = gdu_study(model, x, y, T1=100, T2=10, betas=[0.1, 0.05], estimators=("symmetric",))
    assert s["readout_keys"] == ["synapses.2.weight", "synapses.2.bias"]
    assert not set(s["readout_keys"]) & set(s["param_keys"])
    one, two = _errors(s, "symmetric")
    assert 3.3 < two / one < 4.7


def test_gducheck_with_betas_writes_the_study(tmp_path):
    run_inprocess(["+experiment=gdu_study", "device=cpu", "gdu.n_examples=6", "model.channels=[3,4]",
                   "dynamics.T1=60", "dynamics.T2=6", "gdu.betas=[0.2,0.1]"], tmp_path)
    s = json.loads((tmp_path / "gdu_study.json").read_text())
    assert [(r["estimator"], r["beta"]) for r in s["rows"]] == [
        (e, b) for e in ("one_sided", "random_sign", "symmetric") for b in (0.1, 0.2)]
    assert s["T1"] == 60 and s["T2"] == 6 and s["n_examples"] == 6 and s["dtype"] == "float64"
    for r in s["rows"]:
        assert math.isfinite(r["rmse_params"]) and 0 <= r["sign_error_params"] <= 1
        assert set(r["per_key"]) == set(s["param_keys"]) | set(s["neuron_keys"])
        assert r["sign_error_params"] < 0.3 and r["sign_error_neurons"] < 0.05, r  # EP mostly points BPTT's way
    rmse = {(r["estimator"], r["beta"]): r["rmse_params"] for r in s["rows"]}
    # one-sided's error is O(beta), symmetric's O(beta^2) and far smaller at each beta
    assert 1.6 < rmse["one_sided", 0.2] / rmse["one_sided", 0.1] < 2.4, rmse
    assert 3.0 < rmse["symmetric", 0.2] / rmse["symmetric", 0.1] < 5.0, rmse
    assert rmse["symmetric", 0.1] < 0.05 and all(rmse["symmetric", b] < rmse["one_sided", b] / 2 for b in (0.1, 0.2))
    for r in (r for r in s["rows"] if r["estimator"] == "random_sign"):  # one-sided at the drawn sign
        if r["sign"] > 0:
            assert r["rmse_params"] == rmse["one_sided", r["beta"]], r
        else:
            assert 0.5 < r["rmse_params"] / rmse["one_sided", r["beta"]] < 2, r
    md = (tmp_path / "gdu_study.md").read_text()
    assert "| estimate | beta | RMSE params |" in md and md.count("| symmetric |") == 4  # both tables
    assert "channels [3, 4], fc" in md.split("\n")[0]  # the title gives a conv net's shape
    assert (tmp_path / "gdu_study.png").stat().st_size > 10_000
    assert not (tmp_path / "gdu.json").exists()  # the study replaces the single check


def test_gdu_betas_are_checked():
    with pytest.raises(ConfigError, match="gdu.betas"):
        from_dict(compose_cfg(["mode=gducheck", "gdu.betas=[0.1,-0.1]"]))


# ----- the GDU check during training (the original --check-thm) ----------------------------------------

@pytest.mark.parametrize("estimator", ["symmetric", "bptt"])
def test_periodic_gdu_check_during_training(tmp_path, estimator):
    # the check-folder preset itself, on the offline digits in place of MNIST, checked every batch
    run_inprocess(["+experiment=mnist/mlp", "task=mnist5k", f"estimator={estimator}", "task.limit_train=100",
                   "task.limit_test=50", "dynamics.T1=8", "dynamics.T2=3", "gdu.every=1", "device=cpu"], tmp_path)
    lines = [json.loads(s) for s in (tmp_path / "gdu_train.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["batch"]) for r in lines] == [(1, 1), (1, 2), (2, 1), (2, 2)]  # 2 epochs x 2 batches
    # what the check compares: symmetric EP for a symmetric run; one-sided EP (beta 0.1) for BPTT
    bound = 0.1 if estimator == "symmetric" else 0.4
    for r in lines:
        assert {"synapses.0.weight", "synapses.1.weight", "neurons_0", "neurons_1"} <= set(r["metrics"])
        for key, m in r["metrics"].items():
            assert 0.0 <= m["rmse"] <= 2.0 and 0.0 <= m["sign_error"] <= 1.0
            if key.startswith("synapses."):  # EP tracks BPTT's gradient even on these short float32 phases
                assert m["rmse"] < bound and m["sign_error"] < 0.3, (r["epoch"], r["batch"], key, m)
            else:
                assert m["sign_error"] < 0.05, (r["epoch"], r["batch"], key, m)
    assert lines[0]["metrics"] != lines[-1]["metrics"]  # each check is of the net as trained so far
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]


# ----- mode=evaluate through its preset ---------------------------------------------------------------

def test_evaluate_preset_appends_accuracies_to_the_run(tmp_path):
    run_inprocess(TINY + ["epochs=2", "model=cnn", "model.channels=[4,8]"], tmp_path)
    best = max(r["test_acc"] for r in read_metrics(tmp_path))
    args = ["+experiment=paper/evaluate", f"load_path={tmp_path}", "task=mnist5k", "device=cpu",
            "dynamics.T1=6", "task.limit_train=64", "task.limit_test=50"]
    for _ in range(2):
        p = launch_cli(args, check=True)
        assert "test acc" in p.stdout
    lines = [json.loads(s) for s in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
    assert len(lines) == 2  # appended, never rewritten
    for line in lines:
        assert line["T1"] == 6 and line["batch_size"] == 200  # the preset's batch of 200
        assert line["test_acc"] == pytest.approx(best)  # model.pt is the best epoch's, same T1
        assert 0.0 <= line["train_acc"] <= 1.0
    # each evaluation keeps its own copy of its command line
    assert "mode: evaluate" in (tmp_path / ".hydra-evaluate-1" / "config.yaml").read_text()
    assert "mode: evaluate" in (tmp_path / ".hydra-evaluate-2" / "config.yaml").read_text()
