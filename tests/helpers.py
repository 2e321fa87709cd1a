"""Small float64 networks shared by the numerics tests."""
from types import SimpleNamespace

import torch

from eqprop.losses import build_loss
from eqprop.models import build_model


def model_cfg(name="mlp", **kw):
    base = dict(name=name, archi=[12, 9, 7, 5], channels=[3, 4], kernels=[3, 3], strides=[1, 1],
                paddings=[1, 0], pools="mm", fc=[5], activation="my_hard_sig", scale=None,
                same_update=False)
    base.update(kw)
    return SimpleNamespace(**base)


def small_net(name="mlp", loss="mse", readout=False, seed=0, in_channels=1, in_size=None, **kw):
    torch.manual_seed(seed)
    cfg = model_cfg(name, **kw)
    if in_size is None:
        in_size = 9 if "cnn" in name else None
    if in_size is None:  # mlp: the input is archi[0] = in_channels * in_size^2 with in_size 1
        in_channels, in_size = cfg.archi[0], 1
    model = build_model(cfg, build_loss(loss, readout), in_channels, in_size).double()
    return model


def random_batch(model, n=4, seed=1, classes=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n,) + model.in_shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def random_state(model, n=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((n,) + sh, generator=g, dtype=torch.float64) for sh in model.state_shapes]


def flat(model, grads):
    """A {param: grad} dict as one vector, in the model's parameter order."""
    return torch.cat([grads[p].flatten() for p in model.parameters()])


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()
