"""The vector-field nets against an independent float64 computation of the original code's rules
(Laborieux-Axel/Equilibrium-Propagation, model_utils.py VF_MLP / VF_CNN and main.py's --thirdphase)."""
import pytest
import torch
import torch.nn.functional as F

from eqprop.dynamics import Dynamics
from eqprop.estimators import OneSided, Symmetric
from tests.helpers import random_batch, small_net

DYN = Dynamics(T1=30, T2=10)
BETA = 0.5


def test_vf_mlp_initialises_like_the_original():
    # the original: forward nn.Linear(archi[k], archi[k+1]) for every k, then the backward
    # nn.Linear(archi[k+1], archi[k], bias=False) for k >= 1, all with PyTorch's default init
    archi = [784, 512, 10]
    model = small_net("vf_mlp", archi=archi, seed=3)
    torch.manual_seed(3)
    forward = [torch.nn.Linear(archi[k], archi[k + 1]) for k in range(len(archi) - 1)]
    backward = [torch.nn.Linear(archi[k + 1], archi[k], bias=False) for k in range(1, len(archi) - 1)]
    for ours, theirs in zip(model.synapses, forward):
        assert torch.equal(ours.weight, theirs.weight.double()) and torch.equal(ours.bias, theirs.bias.double())
    for ours, theirs in zip(model.backward_synapses, backward):
        assert torch.equal(ours.weight, theirs.weight.double().t())  # eqprop stores B transposed
    # the fan-in is the upper layer's (10 here): bound 1/sqrt(10) = 0.316, not 1/sqrt(512) = 0.044
    assert 0.3 < model.backward_synapses[0].weight.abs().max().item() <= 10 ** -0.5


def _original_vf_mlp_phi(model, x, send, recv, beta, y):
    """The original VF_MLP.Phi(x, y, send, beta, neurons_2=recv), summed over its per-layer phis:
    <W_k send_{k-1} + b_k, recv_k> + <B_k send_{k+1}, recv_k> - beta * 0.5 |recv_last - onehot(y)|^2,
    written with the original's B (archi[k+1] -> archi[k]) as a leaf."""
    W = [(s.weight, s.bias) for s in model.synapses]
    B = [b.weight.t() for b in model.backward_synapses]
    layers, layers_2 = [x] + list(send), [x] + list(recv)
    phi = 0.0
    for k in range(len(W)):
        phi = phi + ((layers[k] @ W[k][0].t() + W[k][1]) * layers_2[k + 1]).sum(1)
        if k < len(B):
            phi = phi + ((layers[k + 2] @ B[k].t()) * layers_2[k + 1]).sum(1)
    if beta != 0.0:
        phi = phi - beta * 0.5 * (layers_2[-1] - F.one_hot(y, layers_2[-1].shape[1]).double()).pow(2).sum(1)
    return phi


def _original_update(model, x, y, a, b, denom):
    """-(dPhi(a)/dtheta - dPhi(b)/dtheta) / denom, a and b (send, recv, beta), batch mean."""
    params = list(model.parameters())
    with torch.enable_grad():
        delta = _original_vf_mlp_phi(model, x, *a, y).mean() - _original_vf_mlp_phi(model, x, *b, y).mean()
        grads = torch.autograd.grad(-delta / denom, params)
    return dict(zip(params, grads))


def _rel(got: dict, want: dict) -> float:
    return max(((got[p] - want[p]).norm() / want[p].norm()).item() for p in want)


@pytest.fixture(scope="module")
def vf_mlp():
    model = small_net("vf_mlp", loss="mse", activation="tanh")
    x, y = random_batch(model, n=5)
    free, plus, minus = Symmetric(BETA).phases(model, x, y, DYN)
    return model, x, y, free.state, plus.state, minus.state


def test_vf_mlp_third_phase_sends_from_the_plus_state(vf_mlp):
    # main.py --thirdphase with a VF_MLP: compute_syn_grads(x, y, s+, s-, (beta, -beta)), i.e.
    # -(dPhi(send s+, recv s+, beta) - dPhi(send s+, recv s-, -beta)) / (2 beta)
    model, x, y, free, plus, minus = vf_mlp
    want = _original_update(model, x, y, (plus, plus, BETA), (plus, minus, -BETA), 2 * BETA)
    got = Symmetric(BETA)(model, x, y, DYN, None).grads
    assert _rel(got, want) < 1e-12
    # sending from the free equilibrium instead is a different update, by far more than rounding
    from_free = _original_update(model, x, y, (free, plus, BETA), (free, minus, -BETA), 2 * BETA)
    assert _rel(from_free, want) > 1e-2


def test_vf_mlp_one_sided_sends_from_the_free_state(vf_mlp):
    # the second phase alone: compute_syn_grads(x, y, s*, s+, (0, beta)) with
    # phis_1 = Phi(s*) and phis_2 = Phi(send s*, recv s+, beta)
    model, x, y, free, plus, _ = vf_mlp
    want = _original_update(model, x, y, (free, plus, BETA), (free, free, 0.0), BETA)
    got = OneSided(BETA)(model, x, y, DYN, None).grads
    assert _rel(got, want) < 1e-12
