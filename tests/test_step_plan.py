"""The fast path's plan is explicit: choosing it (and relaxing with it) changes nothing on the model;
activations and losses carry their own fast forms, so a new loss needs no change to the step."""
import dataclasses

import pytest
import torch

from eqprop.dynamics import relax, relax_stepwise
from eqprop.kernels import build
from eqprop.kernels.dense import NativeDense
from eqprop.losses import MSE
from eqprop.models.fast import FastStepper
from eqprop.models.step_plan import choose_kernels
from eqprop.models.synapses import ConvKernels
from tests.helpers import random_batch, random_state, small_net
from tests.test_dynamics_step import autograd_step


def synapse_dicts(model):
    return {name: dict(mod.__dict__) for name, mod in model.named_modules()}


@pytest.mark.parametrize("name,kw", [("cnn", {"pools": "mm"}), ("vf_cnn", {"pools": "am"}), ("mlp", {}),
                                     ("vf_mlp", {})])
def test_planning_and_relaxing_leave_the_synapses_unchanged(name, kw):
    model = small_net(name, "cel", True, **kw)
    x, y = random_batch(model)
    state = random_state(model)
    before = synapse_dicts(model)
    for device, channels_last in (("cpu", False), ("cpu", True), ("cuda", False)):
        choose_kernels(model, torch.device(device), channels_last)
    with torch.no_grad():
        for layout in (torch.contiguous_format, torch.channels_last):
            FastStepper(model, model.input_drive(x), state, 0.5, y, memory_format=layout).step()
        relax(model, x, state, 4, 0.5, y)
    after = synapse_dicts(model)
    assert after.keys() == before.keys()
    for mod in before:
        assert after[mod] == before[mod], (mod, set(after[mod]) ^ set(before[mod]))


def test_the_plan_is_immutable_and_follows_the_device():
    model = small_net("cnn", "mse", False, pools="mm")  # the second conv's output is 2x2: a "tiny" map
    cpu = choose_kernels(model, torch.device("cpu"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cpu.layers[0].dense = True
    assert cpu.layers[0].feedback == ConvKernels("conv", "gemm", True)  # tiny map: GEMM transpose
    assert cpu.layers[0].drive is None and cpu.layers[1].drive == cpu.layers[0].feedback
    assert choose_kernels(model, torch.device("cpu"), True).layers[1].drive == ConvKernels("gemm", "gemm")
    assert choose_kernels(model, torch.device("cuda")).layers[1].drive == ConvKernels("conv", "convT")
    assert [layer.dense for layer in cpu.layers] == [False, False, True]
    assert all(layer.dense for layer in choose_kernels(small_net("mlp"), torch.device("cpu")).layers)


class HalfMSE(MSE):
    """A loss the step has never heard of: C = MSE / 2, with a link the native kernel does not know."""
    name, link = "half_mse", "half_identity"

    def cost(self, output, y):
        return 0.5 * super().cost(output, y)

    def grad_at(self, z, target):
        return torch.sub(z, target).mul_(0.5)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_a_new_loss_class_nudges_both_paths_without_touching_them(name):
    model = small_net(name, pools="mm")
    model.loss = HalfMSE()
    x, y = random_batch(model)
    state = random_state(model)
    want = autograd_step(model, x, y, state, 0.7)  # the definition: autograd of Phi with the new cost
    with torch.no_grad():
        got = model.step(model.input_drive(x), state, 0.7, y)
        assert all(torch.allclose(g, w, rtol=0, atol=1e-10) for g, w in zip(got, want))
        fast = relax(model, x, state, 7, 0.7, y)
        slow = relax_stepwise(model, x, state, 7, 0.7, y)
        assert all(torch.allclose(f, s, rtol=0, atol=1e-10) for f, s in zip(fast.state, slow.state))
        if name == "mlp" and build.load() is not None:
            drive0 = model.input_drive(x)
            assert NativeDense.build(FastStepper(model, drive0, state, 0.7, y)) is None  # unknown link
            assert NativeDense.build(FastStepper(model, drive0, state)) is not None  # no nudge: applies
