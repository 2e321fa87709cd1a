"""One closed-form dynamics step equals sigma(autograd dPhi/ds) — the definition — in float64."""
import pytest
import torch

from tests.helpers import random_batch, random_state, small_net

CASES = [
    ("mlp", "mse", False, {}),
    ("mlp", "cel", False, {}),
    ("mlp", "cel", True, {}),
    ("vf_mlp", "mse", False, {}),
    ("vf_mlp", "cel", True, {}),
    ("cnn", "mse", False, {"pools": "mm"}),
    ("cnn", "mse", False, {"pools": "aa"}),
    ("cnn", "mse", False, {"pools": "ii"}),
    ("cnn", "cel", True, {"pools": "ma", "fc": [6, 5]}),
    ("cnn", "cel", False, {"pools": "mi", "strides": [2, 1], "paddings": [1, 1]}),
    ("vf_cnn", "mse", False, {"pools": "mm"}),
    ("vf_cnn", "cel", True, {"pools": "mm", "fc": [6, 5]}),
    ("vf_cnn", "cel", True, {"pools": "am"}),
]


def autograd_step(model, x, y, state, beta):
    """The original definition: Phi differentiated by autograd, then the activation."""
    leaves = [s.clone().requires_grad_(True) for s in state]
    if model.asymmetric:
        phi = model.phi(x, [s.detach() for s in state], beta, y, receiving=leaves).sum()
    else:
        phi = model.phi(x, leaves, beta, y).sum()
    grads = torch.autograd.grad(phi, leaves)
    out = [model.activation(g) for g in grads]
    if model.loss.linear_output:
        out[-1] = grads[-1]
    return out


@pytest.mark.parametrize("name,loss,readout,kw", CASES)
@pytest.mark.parametrize("beta", [0.0, 0.7, -0.3])
def test_step_matches_autograd_of_phi(name, loss, readout, kw, beta):
    model = small_net(name, loss, readout, **kw)
    x, y = random_batch(model)
    state = random_state(model)
    want = autograd_step(model, x, y, state, beta)
    with torch.no_grad():
        got = model.step(model.input_drive(x), state, beta, y)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert torch.allclose(g, w, rtol=0, atol=1e-10), (g - w).abs().max()


@pytest.mark.parametrize("name,loss,readout,kw", CASES[:6] + CASES[10:])
def test_partial_step_updates_only_given_layers(name, loss, readout, kw):
    model = small_net(name, loss, readout, **kw)
    x, y = random_batch(model)
    state = random_state(model)
    full = model.step(model.input_drive(x), state, 0.5, y)
    even = model.step(model.input_drive(x), state, 0.5, y, layers=range(0, model.n_layers, 2))
    for k in range(model.n_layers):
        want = full[k] if k % 2 == 0 else state[k]
        assert torch.allclose(even[k], want, rtol=0, atol=1e-12)


def test_vector_field_with_tied_weights_is_the_symmetric_model():
    sym = small_net("cnn", "cel", True, pools="mm", fc=[6, 5])
    vf = small_net("vf_cnn", "cel", True, pools="mm", fc=[6, 5], seed=3)
    with torch.no_grad():
        for a, b in zip(vf.synapses, sym.synapses):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
        for k, B in enumerate(vf.backward_synapses):
            B.weight.copy_(sym.synapses[k + 1].weight)
    x, y = random_batch(sym)
    s = random_state(sym)
    for u, v in zip(sym.step(sym.input_drive(x), s, 0.4, y), vf.step(vf.input_drive(x), s, 0.4, y)):
        assert torch.allclose(u, v, atol=1e-12)
    assert all(a < 1e-4 for a in vf.angles())
