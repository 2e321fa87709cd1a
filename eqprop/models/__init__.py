"""Model builders: `mlp`, `cnn` and their vector-field forms `vf_mlp`, `vf_cnn`."""
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


def _scale_init(module: torch.nn.Module, scale: Optional[float]):
    if scale is not None:
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(scale)


def build_model(cfg, loss: Loss, in_channels: int, in_size: int) -> EnergyNet:
    """cfg: an eqprop.config.ModelConfig (already validated)."""
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
        backward = make(bias=False)[1:n_layers]
        model = VectorFieldNet(synapses, backward, act, loss, in_shape, same_update=cfg.same_update)
    else:
        model = EnergyNet(synapses, act, loss, in_shape)
    _scale_init(model, cfg.scale)
    return model
