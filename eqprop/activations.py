"""Neuron non-linearities sigma in s <- sigma(dPhi/ds), named as in the original README."""
import torch
import torch.nn.functional as F


def my_sigmoid(x):
    return torch.sigmoid(4.0 * (x - 0.5))


def hard_sigmoid(x):
    return (1.0 + F.hardtanh(2.0 * x - 1.0)) * 0.5


def my_hard_sig(x):
    return (1.0 + F.hardtanh(x - 1.0)) * 0.5


def ctrd_hard_sig(x):
    return F.hardtanh(2.0 * x) * 0.5


ACTIVATIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,  # the original's --act sigmoid
    "my_sigmoid": my_sigmoid,
    "mysig": my_sigmoid,  # the original README's spelling
    "hard_sigmoid": hard_sigmoid,
    "my_hard_sig": my_hard_sig,
    "ctrd_hard_sig": ctrd_hard_sig,
}


def get_activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"model.activation={name!r} is not a known activation; expected one of {sorted(ACTIVATIONS)}"
        ) from None
