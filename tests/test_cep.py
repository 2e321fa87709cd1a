"""Continual EP: per-step weight updates that, as the learning rate goes to 0, add up to one-sided EP's
update; the original's weight-decay correction; random sign and third phase; the config and a run."""
import pytest
import torch

from eqprop.config import ConfigError, from_dict
from eqprop.dynamics import Dynamics
from eqprop.estimators import CEP, OneSided
from tests.fault_utils import ONE_THREAD
from tests.helpers import random_batch, small_net
from tests.launch_utils import TINY, compose_cfg, launch_cli, read_metrics

NETS = {
    "mlp": dict(name="mlp", loss="mse", activation="my_sigmoid"),
    "mlp_readout": dict(name="mlp", loss="cel", readout=True, activation="tanh"),
    "cnn": dict(name="cnn", loss="mse", pools="ma", activation="my_sigmoid"),
}
DYN = Dynamics(T1=60, T2=12)


def sgd(model, lr, wd=0.0):
    return torch.optim.SGD([{"params": g, "lr": lr, "weight_decay": wd} for g in model.layer_groups()], lr=lr)


def run_cep(model, x, y, est, lr, wd=0.0, dyn=DYN, seed=0):
    est.bind_optimizer(sgd(model, lr, wd))
    before = [p.detach().clone() for p in model.parameters()]
    out = est(model, x, y, dyn, torch.Generator().manual_seed(seed))
    moved = [p.detach().clone() - b for p, b in zip(model.parameters(), before)]
    with torch.no_grad():
        for p, b in zip(model.parameters(), before):
            p.copy_(b)
    return out, moved


@pytest.mark.parametrize("net", sorted(NETS))
def test_summed_updates_are_one_sided_ep_as_lr_goes_to_zero(net):
    model = small_net(**NETS[net])
    x, y = random_batch(model, n=5)
    ref = OneSided(0.3)(model, x, y, DYN, torch.Generator().manual_seed(0)).grads
    def rel(a, b):
        return max(((a[p] - b[p]).norm() / b[p].norm()).item() for p in model.parameters())

    errors = []
    for lr in (1e-6, 1e-7, 1e-8):
        out, moved = run_cep(model, x, y, CEP(0.3), lr)
        assert out.applied
        errors.append(rel(out.grads, ref))
    # the gap is the weights' move during the phase: linear in lr, to 0
    assert all(8 < a / b < 12 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5, errors
    # and what the weights moved by, per unit of lr, is that sum (at lr 1e-8, float64 still resolves it)
    assert rel({p: -d / 1e-8 for p, d in zip(model.parameters(), moved)}, ref) < 1e-5
    # a finite lr moves the weights during the phase: the sum is no longer one-sided EP's update
    out, _ = run_cep(model, x, y, CEP(0.3), 0.5)
    assert max((out.grads[p] - ref[p]).abs().max().item() for p in model.parameters()) > 1e-4


def test_weight_decay_correction_leaves_one_decay_per_phase():
    """SGD decays the weights at each of the T2 steps; the original divides step t's gradient by
    (1 - lr wd)^(T2 - 1 - t), so the weights end at (1 - lr wd)^T2 theta_0 - lr * (sum of the updates)."""
    model = small_net(**NETS["mlp"])
    x, y = random_batch(model, n=5)
    lr, wd = 0.05, 0.3
    theta0 = [p.detach().clone() for p in model.parameters()]
    out, moved = run_cep(model, x, y, CEP(0.3), lr, wd)
    c = (1 - lr * wd) ** DYN.T2
    for p, t0, d in zip(model.parameters(), theta0, moved):
        torch.testing.assert_close(t0 + d, c * t0 - lr * out.grads[p], rtol=1e-10, atol=1e-12)


def test_random_sign_draws_both_signs_each_one_sided_at_that_sign():
    model = small_net(**NETS["mlp"])
    x, y = random_batch(model, n=5)
    ref = {s: OneSided(s * 0.3)(model, x, y, DYN, None).grads for s in (1, -1)}
    seen = set()
    for seed in range(8):
        out, _ = run_cep(model, x, y, CEP(0.3, random_sign=True), 1e-12, seed=seed)
        sign = 1 if torch.randint(0, 2, (1,), generator=torch.Generator().manual_seed(seed)).item() else -1
        seen.add(sign)
        for p in model.parameters():
            torch.testing.assert_close(out.grads[p], ref[sign][p], rtol=1e-7, atol=1e-10)
    assert seen == {1, -1}


def test_third_phase_adds_half_the_minus_beta_update():
    """As the original: after the +beta phase, T2 steps back at beta 0 and T2 updating steps at -beta,
    each -(dPhi(s_t+1) - dPhi(s_t)) / (-2 beta): at lr -> 0, one-sided(+beta) + one-sided(-beta) / 2."""
    model = small_net(**NETS["mlp"])
    x, y = random_batch(model, n=5)
    dyn = Dynamics(T1=60, T2=40)  # long enough to come back to the free equilibrium
    plus = OneSided(0.3)(model, x, y, dyn, None).grads
    minus = OneSided(-0.3)(model, x, y, dyn, None).grads
    out, _ = run_cep(model, x, y, CEP(0.3, third_phase=True), 1e-12, dyn=dyn)
    for p in model.parameters():
        torch.testing.assert_close(out.grads[p], plus[p] + 0.5 * minus[p], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("over,fragment", [
    (["estimator=cep", "dynamics.tol=1e-4"], "dynamics.tol=0.0001 (a convergence stop) does not apply"),
    (["estimator=cep", "dynamics.update=async"], "set dynamics.update=sync"),
    (["estimator=cep", "model=vf_mlp"], "estimator=cep runs model=mlp or model=cnn"),
    (["estimator=symmetric", "estimator.third_phase=true"], "options of estimator=cep, not of estimator=symmetric"),
])
def test_config_refuses(over, fragment):
    with pytest.raises(ConfigError) as err:
        from_dict(compose_cfg(over))
    assert fragment in str(err.value)


def test_preset_is_train_mnist_cep():
    cfg = from_dict(compose_cfg(["+experiment=mnist/cep"]))
    assert (cfg.estimator.name, cfg.estimator.beta, cfg.dynamics.T1, cfg.dynamics.T2) == ("cep", 0.2, 40, 15)
    assert (cfg.optimizer.name, cfg.optimizer.lrs, cfg.task.batch_size, cfg.epochs) == ("sgd", [0.0056, 0.0028], 20, 100)
    assert (cfg.model.archi, cfg.model.activation, cfg.loss.name) == ([784, 512, 10], "my_sigmoid", "mse")


def test_trains_through_launch(tmp_path):
    p = launch_cli(["estimator=cep", "task=digits", "model.archi=[64,32,10]"] + TINY + ["logger=none"],
                   run_dir=tmp_path, timeout=300, env=ONE_THREAD, check=True)
    metrics = read_metrics(tmp_path)
    assert metrics and all(m["train_loss"] == m["train_loss"] for m in metrics if "train_loss" in m), metrics
