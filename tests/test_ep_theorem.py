"""The EP theorem on small converged float64 networks: EP estimates approach the BPTT gradient,
one-sided with an O(beta) bias, symmetric with O(beta^2)."""
import pytest
import torch

from eqprop.dynamics import Dynamics
from eqprop.estimators import BPTT, OneSided, Symmetric
from tests.helpers import flat, random_batch, rel_err, small_net

NETS = {
    "mlp": dict(name="mlp", loss="mse", readout=False, activation="tanh"),
    "mlp_readout": dict(name="mlp", loss="cel", readout=True, activation="tanh"),
    "cnn_maxpool": dict(name="cnn", loss="mse", readout=False, pools="mm", activation="my_sigmoid"),
    "cnn_readout": dict(name="cnn", loss="cel", readout=True, pools="mm", fc=[6, 5], activation="my_sigmoid"),
}
DYN = Dynamics(T1=150, T2=100)


@pytest.fixture(scope="module", params=sorted(NETS))
def setup(request):
    model = small_net(**NETS[request.param])
    x, y = random_batch(model, n=6)
    gen = torch.Generator().manual_seed(0)
    bptt = flat(model, BPTT()(model, x, y, DYN, gen).grads)
    return request.param, model, x, y, bptt


def test_symmetric_matches_bptt(setup):
    name, model, x, y, bptt = setup
    gen = torch.Generator().manual_seed(0)
    ep = flat(model, Symmetric(0.01)(model, x, y, DYN, gen).grads)
    assert rel_err(ep, bptt) < 1e-3, name


def test_bias_orders(setup):
    name, model, x, y, bptt = setup
    gen = torch.Generator().manual_seed(0)
    one, sym = [], []
    betas = [0.1, 0.05, 0.025]
    for b in betas:
        one.append(rel_err(flat(model, OneSided(b)(model, x, y, DYN, gen).grads), bptt))
        sym.append(rel_err(flat(model, Symmetric(b)(model, x, y, DYN, gen).grads), bptt))
    # halving beta halves the one-sided error (order 1) and quarters the symmetric one (order 2)
    for i in range(len(betas) - 1):
        assert 1.7 < one[i] / one[i + 1] < 2.3, (name, one)
        assert 3.5 < sym[i] / sym[i + 1] < 4.5, (name, sym)
    assert all(s < o for s, o in zip(sym, one))


# ----- random sign: both signs, at probability 1/2, each exactly one-sided EP at that sign -------------

def _grads_equal(model, a, b):
    return all(torch.equal(a[p], b[p]) for p in model.parameters())


def test_random_sign_draws_each_sign_half_the_time():
    from eqprop.estimators import RandomSign

    est, gen = RandomSign(0.1), torch.Generator().manual_seed(0)
    signs = [est.sign(gen) for _ in range(4000)]
    assert set(signs) == {1.0, -1.0}
    # 4,000 fair draws: the share of +1 lies within 0.5 +- 0.03 (3.8 standard deviations)
    assert abs(signs.count(1.0) / len(signs) - 0.5) < 0.03


def test_random_sign_estimate_is_one_sided_at_the_drawn_sign():
    from eqprop.estimators import RandomSign

    model = small_net(name="mlp", loss="mse", activation="tanh")
    x, y = random_batch(model, n=4)
    dyn, gen = Dynamics(T1=20, T2=5), torch.Generator().manual_seed(0)
    plus = OneSided(0.1)(model, x, y, dyn, gen).grads
    minus = OneSided(-0.1)(model, x, y, dyn, gen).grads
    assert not _grads_equal(model, plus, minus)
    seen = []
    for _ in range(12):
        g = RandomSign(0.1)(model, x, y, dyn, gen).grads
        is_plus, is_minus = _grads_equal(model, g, plus), _grads_equal(model, g, minus)
        assert is_plus != is_minus  # exactly one of the two one-sided estimates, bit for bit
        seen.append(1 if is_plus else -1)
    assert set(seen) == {1, -1}, seen  # 12 fair draws all alike: probability 1/2048


# ----- BPTT: autograd through exactly the last T2 steps ---------------------------------------------

def _autograd_bptt(model, x, y, T1, T2):
    """The reference, written from the definition: s <- sigma(dPhi/ds) by autograd of Phi (no
    model.step, no relax), T1 - T2 steps without a graph, then T2 steps recorded, and the batch-mean
    loss at the last state differentiated with respect to the parameters."""
    from tests.test_dynamics_step import autograd_step

    state = model.init_state(x.shape[0], dtype=x.dtype)
    for _ in range(T1 - T2):
        state = [s.detach() for s in autograd_step(model, x, y, state, 0.0)]
    params = list(model.parameters())
    with torch.enable_grad():
        for _ in range(T2):
            leaves = [s if s.requires_grad else s.clone().requires_grad_(True) for s in state]
            phi = model.phi(x, leaves, 0.0, y).sum()
            grads = torch.autograd.grad(phi, leaves, create_graph=True)
            state = [model.activation(g) for g in grads]
        loss = model.loss.cost(model.output(state), y).mean()
        return [g for g in torch.autograd.grad(loss, params)]


def test_bptt_is_autograd_through_exactly_t2_unrolled_steps():
    """Short, unconverged dynamics (T1 20, T2 5): one step more or less moves the gradient by
    percents, where converged nets would hide it."""
    model = small_net(name="mlp", loss="mse", activation="tanh")
    x, y = random_batch(model, n=4)
    got = flat(model, BPTT()(model, x, y, Dynamics(T1=20, T2=5), torch.Generator().manual_seed(0)).grads)
    want = torch.cat([g.flatten() for g in _autograd_bptt(model, x, y, 20, 5)])
    assert rel_err(got, want) < 1e-10
    # the test can tell T2 from T2 - 1 (and a head of T1 - T2 from T1 - T2 + 1)
    off_by_one = torch.cat([g.flatten() for g in _autograd_bptt(model, x, y, 20, 4)])
    assert rel_err(off_by_one, want) > 1e-2
