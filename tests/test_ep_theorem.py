"""The EP theorem on small converged float64 networks: EP estimates approach the BPTT gradient,
one-sided with an O(beta) bias, symmetric with O(beta^2)."""
import pytest
import torch

from eqprop.estimators import BPTT, Dynamics, OneSided, Symmetric
from tests.helpers import random_batch, small_net

NETS = {
    "mlp": dict(name="mlp", loss="mse", readout=False, activation="tanh"),
    "mlp_readout": dict(name="mlp", loss="cel", readout=True, activation="tanh"),
    "cnn_maxpool": dict(name="cnn", loss="mse", readout=False, pools="mm", activation="my_sigmoid"),
    "cnn_readout": dict(name="cnn", loss="cel", readout=True, pools="mm", fc=[6, 5], activation="my_sigmoid"),
}
DYN = Dynamics(T1=150, T2=100)


def flat(model, grads):
    return torch.cat([grads[p].flatten() for p in model.parameters()])


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


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
