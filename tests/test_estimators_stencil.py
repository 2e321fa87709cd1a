"""N-point and holomorphic EP on small converged float64 nets: the stencils' bias orders against
BPTT, holomorphic EP's geometric convergence in N at a finite beta, and the exact reductions to
symmetric EP at 2 points."""
import pytest
import torch

from eqprop.dynamics import Dynamics
from eqprop.estimators import BPTT, Holomorphic, NPoint, Symmetric
from eqprop.gdu_study import _fit_order
from tests.helpers import flat, random_batch, rel_err, small_net


NETS = {
    "mlp": dict(name="mlp", loss="cel", readout=True, activation="tanh"),
    "cnn": dict(name="cnn", loss="cel", readout=True, pools="aa", fc=[6, 5], activation="tanh", scale=0.5),
    "mlp_mse": dict(name="mlp", loss="mse", readout=False, activation="tanh", scale=0.5),
}
DYN = Dynamics(T1=200, T2=200)  # float64 and converged: the error left is the estimator's bias


@pytest.fixture(scope="module", params=sorted(NETS))
def setup(request):
    model = small_net(**NETS[request.param])
    x, y = random_batch(model, n=6)
    bptt = flat(model, BPTT()(model, x, y, DYN, torch.Generator().manual_seed(0)).grads)
    return request.param, model, x, y, bptt


def error(est, setup):
    _, model, x, y, bptt = setup
    return rel_err(flat(model, est(model, x, y, DYN, torch.Generator().manual_seed(0)).grads), bptt)


def test_fitted_orders(setup):
    betas = [0.2, 0.1, 0.05]
    sym = [error(Symmetric(b), setup) for b in betas]
    four = [error(NPoint(b, 4), setup) for b in betas]
    assert 1.8 < _fit_order(betas, sym) < 2.3, (setup[0], sym)
    assert 3.5 < _fit_order(betas, four) < 4.5, (setup[0], four)


@pytest.mark.parametrize("cls", [NPoint, Holomorphic])
def test_two_points_is_symmetric_exactly(setup, cls):
    name, model, x, y, _ = setup
    gen = torch.Generator().manual_seed(0)
    dyn = Dynamics(T1=40, T2=15)  # bit-for-bit equality needs no convergence
    a = cls(0.3, 2)(model, x, y, dyn, gen).grads
    b = Symmetric(0.3)(model, x, y, dyn, gen).grads
    assert all(torch.equal(a[p], b[p]) for p in model.parameters()), name
    free = Symmetric(0.3).phases(model, x, y, dyn)[0].state
    ta, _ = cls(0.3, 2).traces(model, x, y, free, 5)
    tb, _ = Symmetric(0.3).traces(model, x, y, free, 5)
    assert all(torch.equal(ta[k], tb[k]) for k in tb), name


@pytest.mark.parametrize("cls", [NPoint, Holomorphic])
def test_traces_sum_to_the_training_update(setup, cls):
    """The GDU traces are the same update rule per step: over T2 steps they add up to training's update."""
    name, model, x, y, _ = setup
    dyn = Dynamics(T1=200, T2=20)
    est = cls(0.3, 4)
    gen = torch.Generator().manual_seed(0)
    out = est(model, x, y, dyn, gen)
    traces, _ = est.traces(model, x, y, out.free, dyn.T2)
    for key, p in model.named_parameters():
        torch.testing.assert_close(traces[key].sum(0), out.grads[p], rtol=1e-9, atol=1e-12, msg=f"{name} {key}")


def test_holomorphic_converges_geometrically_at_finite_beta():
    """At beta 0.5 the holomorphic error falls geometrically with N, to 1e-6 or better by N = 8, where
    the real stencils with as many phases stay far above it."""
    model = small_net(**NETS["cnn"])
    x, y = random_batch(model, n=6)
    setup = ("cnn", model, x, y, flat(model, BPTT()(model, x, y, DYN, torch.Generator().manual_seed(0)).grads))
    holo = [error(Holomorphic(0.5, n), setup) for n in (2, 4, 6, 8)]
    assert all(b < a / 10 for a, b in zip(holo, holo[1:])), holo
    assert min(holo) <= 1e-6, holo
    stencils = [error(NPoint(0.5, n), setup) for n in (4, 6, 8)]
    assert all(s > 3 * h for s, h in zip(stencils, holo[1:])), (stencils, holo)
    assert stencils[-1] > 100 * holo[-1], (stencils, holo)
    assert error(Symmetric(0.5), setup) > 1e3 * holo[-1]


def test_gdu_study_rows_for_the_new_estimators():
    """The study's rows carry points and rel_error (the total update against BPTT); the stencils'
    fitted orders come out as their points."""
    from eqprop.gdu_study import gdu_study

    model = small_net(**NETS["mlp"])
    x, y = random_batch(model, n=6)
    study = gdu_study(model, x, y, T1=200, T2=40, betas=[0.2, 0.1, 0.05],
                      estimators=("symmetric", "n_point", "holomorphic"), generator=torch.Generator().manual_seed(0))
    rows = {(r["estimator"], r["beta"]): r for r in study["rows"]}
    assert {r["points"] for r in study["rows"]} == {None, 4}
    assert rows[("n_point", 0.1)]["points"] == 4 and rows[("symmetric", 0.1)]["points"] is None
    # rel_error is the training update's distance from BPTT's gradient
    bptt = flat(model, BPTT()(model, x, y, Dynamics(200, 40), torch.Generator().manual_seed(0)).grads)
    ep = flat(model, NPoint(0.1, 4)(model, x, y, Dynamics(200, 40), torch.Generator().manual_seed(0)).grads)
    assert abs(rows[("n_point", 0.1)]["rel_error"] / rel_err(ep, bptt) - 1) < 1e-6
    orders = study["fitted_order_rel_error"]
    assert 1.8 < orders["symmetric"] < 2.3 and 3.5 < orders["n_point"] < 4.5 and orders["holomorphic"] > 3.5, orders
    assert study["expected_order"] == {"symmetric": 2, "n_point": 4, "holomorphic": 4}
