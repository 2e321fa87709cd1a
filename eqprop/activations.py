"""Neuron non-linearities sigma in s <- sigma(dPhi/ds), named as in the original README, and the one
table that says how the fast paths compute each of them.

Every activation here is sigma(x) == post(scale * x) with a power-of-two scale and a post that can
overwrite its input: the fast torch step folds the scale into scaled copies of dense weights (or the
last op of a conv layer's pre-activation) and runs post in place on its buffer; the native kernel
implements post itself from its `Post` form. (1 + hardtanh(x - 1)) / 2 == clamp(x / 2, 0, 1) and
sigmoid(4 (x - 0.5)) == sigmoid(4 x - 2), up to the rounding of one subtraction.
"""
from dataclasses import dataclass
from typing import Callable, Optional

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


@dataclass(frozen=True)
class Post:
    """An output map that runs in place: "clamp" t to [a, b], "sigmoid" of t - a, or "tanh"."""
    kind: str
    a: float = 0.0
    b: float = 0.0

    def in_place(self) -> Callable:
        a, b = self.a, self.b
        if self.kind == "clamp":
            return lambda t: t.clamp_(a, b)
        if self.kind == "sigmoid":
            return lambda t: t.sub_(a).sigmoid_()
        if self.kind == "tanh":
            return torch.tanh_
        raise ValueError(f"unknown post form {self.kind!r}")


@dataclass(frozen=True)
class Activation:
    """sigma: `fn` is the definition (what `model.step` and autograd run); sigma(x) == post(scale * x).
    post None: no in-place form is known, the fast step copies fn's result (any callable works)."""
    name: str
    fn: Callable
    scale: float = 1.0
    post: Optional[Post] = None

    def __call__(self, x):
        return self.fn(x)

    def post_in_place(self) -> Callable:
        """post as a function that overwrites its argument: built once, called in the hot loop."""
        if self.post is None:
            fn = self.fn
            return lambda t: t.copy_(fn(t))
        return self.post.in_place()

    def in_place(self) -> Callable:
        """sigma as a function that overwrites its argument."""
        post, scale = self.post_in_place(), self.scale
        return post if scale == 1.0 else (lambda t: post(t.mul_(scale)))


_TABLE = (
    Activation("tanh", torch.tanh, 1.0, Post("tanh")),
    Activation("sigmoid", torch.sigmoid),  # the original's --act sigmoid; no fast in-place form
    Activation("my_sigmoid", my_sigmoid, 4.0, Post("sigmoid", 2.0)),
    Activation("hard_sigmoid", hard_sigmoid, 1.0, Post("clamp", 0.0, 1.0)),
    Activation("my_hard_sig", my_hard_sig, 0.5, Post("clamp", 0.0, 1.0)),
    Activation("ctrd_hard_sig", ctrd_hard_sig, 1.0, Post("clamp", -0.5, 0.5)),
)
ACTIVATIONS = {a.name: a for a in _TABLE}
ACTIVATIONS["mysig"] = ACTIVATIONS["my_sigmoid"]  # the original README's spelling


def as_activation(fn) -> Activation:
    """`fn` itself when it is a table entry; any other callable with no in-place form."""
    return fn if isinstance(fn, Activation) else Activation(getattr(fn, "__name__", repr(fn)), fn)


def inplace_activation(fn) -> Callable:
    """The in-place form of activation `fn` (a copy through fn for callables outside the table)."""
    return as_activation(fn).in_place()


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"model.activation={name!r} is not a known activation; expected one of {sorted(ACTIVATIONS)}"
        ) from None
