"""One definition of every EP update: the GDU check's per-step EP traces sum over time to the update
training makes, for every model family, loss and EP estimator (float64)."""
import itertools

import pytest
import torch

from eqprop.dynamics import Dynamics
from eqprop.estimators import OneSided, RandomSign, Symmetric
from eqprop.gdu import gdu_check
from tests.helpers import random_batch, small_net

MODELS = {  # name -> (model, same_update)
    "mlp": ("mlp", False), "vf_mlp": ("vf_mlp", False), "vf_mlp_same_update": ("vf_mlp", True),
    "cnn": ("cnn", False), "vf_cnn": ("vf_cnn", False), "vf_cnn_same_update": ("vf_cnn", True),
}
LOSSES = {"mse": ("mse", False), "cel": ("cel", False), "cel_softmax_readout": ("cel", True)}
# random_sign with generator seeds 1 and 0 draws +beta and -beta (asserted below)
ESTIMATORS = {"one_sided": (OneSided, 0), "random_sign+": (RandomSign, 1), "random_sign-": (RandomSign, 0),
              "symmetric": (Symmetric, 0)}
DYN = Dynamics(T1=12, T2=4)
BETA = 0.3


def _net(model, loss):
    name, same_update = MODELS[model]
    loss_name, readout = LOSSES[loss]
    kw = {"fc": [6, 5]} if readout and "cnn" in name else {}
    m = small_net(name, loss=loss_name, readout=readout, same_update=same_update, activation="tanh", **kw)
    return m, *random_batch(m, n=2)


@pytest.mark.parametrize("model,loss,est", list(itertools.product(MODELS, LOSSES, ESTIMATORS)))
def test_gdu_traces_sum_to_the_training_update(model, loss, est):
    m, x, y = _net(model, loss)
    cls, seed = ESTIMATORS[est]
    estimator = cls(BETA)
    trained = estimator(m, x, y, DYN, torch.Generator().manual_seed(seed))
    traces, betas = estimator.traces(m, x, y, trained.free, DYN.T2, torch.Generator().manual_seed(seed))
    if est.startswith("random_sign"):
        assert betas == ((BETA,) if est.endswith("+") else (-BETA,))
    scale = max(g.norm().item() for g in trained.grads.values())
    for name, p in m.named_parameters():
        want, got = trained.grads[p], traces[name].sum(dim=0)
        assert traces[name].shape[0] == DYN.T2
        assert (got - want).norm().item() <= 1e-9 * max(want.norm().item(), 1e-6 * scale), (name, model, loss, est)


def test_the_check_uses_the_estimators_traces():
    # gdu_check measures exactly the estimator's traces: on a VF net with the same_update averaging
    # the averaged W/B pair must come out equal in the check too
    m, x, y = _net("vf_cnn_same_update", "mse")
    _, ep, metrics = gdu_check(m, x, y, DYN.T1, DYN.T2, Symmetric(BETA))
    assert torch.equal(ep["synapses.1.weight"], ep["backward_synapses.0.weight"])
    assert set(metrics) == set(ep)
