"""The original's `--act sigmoid` (main.py: torch.sigmoid) as model.activation=sigmoid."""
import torch

from eqprop.config import from_dict
from eqprop.dynamics import relax, relax_stepwise
from tests.helpers import random_batch, small_net
from tests.launch_utils import compose_cfg


def test_sigmoid_is_the_original_plain_sigmoid_and_relaxes_like_the_definition():
    assert from_dict(compose_cfg(["model.activation=sigmoid"])).model.activation == "sigmoid"
    model = small_net("mlp", activation="sigmoid")
    assert model.activation.fn is torch.sigmoid
    x, y = random_batch(model, n=5)
    state = model.init_state(5)
    fast = relax(model, x, state, 12, 0.4, y)
    ref = relax_stepwise(model, x, state, 12, 0.4, y)
    for a, b in zip(fast.state, ref.state):
        assert torch.allclose(a, b, rtol=0, atol=1e-13)
    # one step from zero: the first layer is the plain sigmoid of its input drive
    one = relax_stepwise(model, x, state, 1).state[0]
    w, b = model.synapses[0].weight, model.synapses[0].bias
    assert torch.allclose(one, torch.sigmoid(x @ w.t() + b), rtol=0, atol=1e-15)
