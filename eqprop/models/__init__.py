"""Model builders: `mlp`, `cnn` and their vector-field forms `vf_mlp`, `vf_cnn`."""
import math
from typing import NamedTuple, Optional

import torch

from eqprop.activations import get_activation
from eqprop.losses import Loss
from eqprop.models.energy_net import EnergyNet
from eqprop.models.synapses import ConvPool, Dense
from eqprop.models.vector_field import VectorFieldNet


class Kind(NamedTuple):
    dense: bool          # an MLP's synapses (else convolutions, then fully connected layers)
    vector_field: bool   # separate backward weights (VectorFieldNet)


MODELS = {"mlp": Kind(True, False), "vf_mlp": Kind(True, True), "cnn": Kind(False, False),
          "vf_cnn": Kind(False, True)}


def _mlp_synapses(archi, bias=True):
    return [Dense(archi[i], archi[i + 1], bias=bias) for i in range(len(archi) - 1)]


def _cnn_synapses(in_channels, in_size, channels, kernels, strides, paddings, pools, fc, bias=True):
    chans = [in_channels] + list(channels)
    syn, size = [], in_size
    for i in range(len(channels)):
        conv = ConvPool(chans[i], chans[i + 1], kernels[i], strides[i], paddings[i], pools[i], bias=bias)
        size = conv.output_size(size)
        syn.append(conv)
    dims = [size * size * chans[-1]] + list(fc)
    syn += [Dense(dims[i], dims[i + 1], bias=bias) for i in range(len(fc))]
    return syn


def _init_like_the_original_vf_mlp(backward):
    """The original VF-MLP's B_{k+1} is nn.Linear(archi[k+1], archi[k]): it reads the upper layer, so
    its default init bound is 1/sqrt(archi[k+1]) (fan-in of the layer it sends from). eqprop stores the
    transpose (shaped like forward synapse k+1, whose fan-in is archi[k]); draw the original's matrix,
    in the original's order, and store its transpose."""
    with torch.no_grad():
        for B in backward:
            original = torch.empty(B.in_features, B.out_features, dtype=B.weight.dtype, device=B.weight.device)
            bound = 1.0 / math.sqrt(B.out_features)
            original.uniform_(-bound, bound)
            B.weight.copy_(original.t())


def _scale_init(module: torch.nn.Module, scale: Optional[float]):
    if scale is not None:
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(scale)


def build_model(cfg, loss: Loss, in_channels: int, in_size: int) -> EnergyNet:
    """cfg: an eqprop.models.config.ModelConfig (already validated)."""
    act = get_activation(cfg.activation)
    kind = MODELS[cfg.name]
    if kind.dense:
        in_shape = (in_channels * in_size * in_size,)

        def make(bias=True):
            return _mlp_synapses(cfg.archi, bias=bias)
    else:
        in_shape = (in_channels, in_size, in_size)

        def make(bias=True):
            return _cnn_synapses(in_channels, in_size, cfg.channels, cfg.kernels, cfg.strides,
                                 cfg.paddings, cfg.pools, cfg.fc, bias=bias)
    synapses = make()
    if kind.vector_field:
        n_layers = len(synapses) - (1 if loss.softmax_readout else 0)
        # B_{k+1} is shaped like forward synapse k+1; the read-out has no backward twin.
        if kind.dense:
            # allocated without an init, so that the draws are the original's, in its order
            backward = [torch.nn.utils.skip_init(Dense, cfg.archi[k], cfg.archi[k + 1], bias=False)
                        for k in range(1, n_layers)]
            _init_like_the_original_vf_mlp(backward)
        else:
            backward = make(bias=False)[1:n_layers]
        # the original VF-MLP's third phase sends from s^+beta, its VF-CNN's from the free state
        model = VectorFieldNet(synapses, backward, act, loss, in_shape, same_update=cfg.same_update,
                               symmetric_sends_from_plus=kind.dense)
    else:
        model = EnergyNet(synapses, act, loss, in_shape)
    _scale_init(model, cfg.scale)
    return model
