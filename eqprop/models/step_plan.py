"""The plan of the fast relaxation step: per neuron layer, how FastStepper (and the native kernel)
update it. Chosen from the model's structure and the device, read-only: the model is not changed.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from eqprop.activations import Activation, as_activation
from eqprop.models.synapses import ConvKernels, ConvPool, Dense


@dataclass(frozen=True)
class LayerPlan:
    """How layer k is updated: s_k <- post(scale * (drive + feedback [+ nudge]))."""
    activation: Optional[Activation]   # None: a linear layer (the top layer under cross-entropy without read-out)
    dense: bool                        # every synapse it reads is Dense: GEMMs on weight copies pre-scaled by `scale`
    drive: Optional[ConvKernels]       # kernels of forward synapse k when it is a conv (k > 0)
    feedback: Optional[ConvKernels]    # kernels of the conv synapse feeding layer k + 1 back into layer k

    @property
    def scale(self) -> float:
        return 1.0 if self.activation is None else self.activation.scale


@dataclass(frozen=True)
class StepPlan:
    layers: Tuple[LayerPlan, ...]

    @property
    def all_dense(self) -> bool:
        return all(layer.dense for layer in self.layers)

    def forcing(self, kernels: ConvKernels) -> "StepPlan":
        """This plan with every conv synapse on `kernels` (to check or time each choice)."""
        return StepPlan(tuple(LayerPlan(layer.activation, layer.dense,
                                        None if layer.drive is None else kernels,
                                        None if layer.feedback is None else kernels)
                              for layer in self.layers))


def choose_kernels(model, device, channels_last: bool = False) -> StepPlan:
    """The plan of `model`'s fast step on `device` (channels_last: the conv states' layout).

    Dense layers: with a power-of-two scale (every table activation's), scaling the weights and the
    input drive once per relaxation gives bitwise the same products as scaling each GEMM's output,
    and a plain addmm skips the separate scaling pass that alpha = beta = scale != 1 runs.

    Conv kernels, why these (measurements: benchmarks/README.md):
    - CPU, NCHW (default): the forward convs are autograd's (oneDNN), so states match the original
      way to the rounding of a few additions. That matters: a max-pool window whose two largest
      inputs are within rounding of each other routes the feedback elsewhere when a conv rounds
      differently, and the paper CNN has many such near-ties. The transposes are oneDNN's
      backward-data kernel, except for convs with at most 4 output positions (the paper CNN's
      4x4 -> 2x2 conv), where one GEMM + fold is faster than oneDNN; a transpose only feeds the
      states, not the pooling, so its rounding does not move the routing. The pooling goes through
      a channels-last copy (PyTorch's NCHW max-pool kernel on CPU is slow).
    - CPU, channels-last (opt-in): oneDNN's channels-last convolutions, and GEMMs both ways for the
      tiny maps. Faster; equal to the NCHW path up to near-tie routing.
    - GPU: cuDNN's conv and transposed conv in either layout."""
    device = torch.device(device)
    n, loss = model.n_layers, model.loss
    act = as_activation(model.activation)
    inputs = [tuple(model.in_shape)] + [tuple(sh) for sh in model.state_shapes]  # what synapse k reads
    layers = []
    for k in range(n):
        activation = None if (k == n - 1 and loss.linear_output) else act
        fwd = model.synapses[k] if k > 0 else None
        fb = model.feedback_synapse(k)[0] if k + 1 < n else None
        scale = 1.0 if activation is None else activation.scale
        dense = (n > 1 and len(model.state_shapes[k]) == 1 and math.frexp(scale)[0] == 0.5
                 and all(s is None or isinstance(s, Dense) for s in (fwd, fb)))
        layers.append(LayerPlan(activation, dense, _conv_kernels(fwd, inputs[k], device, channels_last),
                                _conv_kernels(fb, inputs[k + 1], device, channels_last)))
    return StepPlan(tuple(layers))


def _conv_kernels(syn, in_shape, device, channels_last) -> Optional[ConvKernels]:
    if not isinstance(syn, ConvPool):
        return None
    tiny = math.prod(syn._conv_shape((1,) + in_shape)[2:]) <= 4
    if device.type != "cpu":
        return ConvKernels("conv", "convT")
    if not channels_last:
        return ConvKernels("conv", "gemm" if tiny else "data", pool_via_cl=True)
    return ConvKernels("gemm", "gemm") if tiny else ConvKernels("conv", "data")


def choose_layout(drive0):
    """Channels-last state buffers when drive0 is channels-last (the caller converted the model or
    the input, or set Dynamics.channels_last), NCHW otherwise."""
    if drive0.dim() == 4 and not drive0.is_contiguous() and drive0.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.preserve_format
