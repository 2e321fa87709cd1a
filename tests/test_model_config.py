"""The conv stack's feature-map sizes that config validation checks are the ones the built model has."""
import pytest
import torch

from eqprop.losses import build_loss
from eqprop.models import build_model
from eqprop.models.config import ModelConfig


@pytest.mark.parametrize("kernels,strides,paddings,pools", [
    ([3, 3], [1, 1], [1, 0], "mm"), ([5, 2], [2, 1], [0, 1], "ai"), ([3, 3], [1, 2], [2, 0], "im")])
def test_feature_map_sizes_are_the_built_models(kernels, strides, paddings, pools):
    cfg = ModelConfig(name="cnn", activation="tanh", channels=[2, 3], kernels=kernels, strides=strides,
                      paddings=paddings, pools=pools, fc=[10])
    model = build_model(cfg, build_loss("mse", False), in_channels=1, in_size=13)
    s = torch.zeros(1, 1, 13, 13)
    sizes = []
    for syn in model.synapses[:2]:
        s = syn.drive(s)[0]
        sizes.append(s.shape[-1])
    assert sizes == cfg.feature_map_sizes(13)
    assert model.synapses[2].in_features == 3 * sizes[-1] ** 2
