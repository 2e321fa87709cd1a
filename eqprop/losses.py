"""Cost functions C(output, y) that nudge the network, each with its closed-form nudge.

`cost` is differentiable (used for BPTT and for the Phi-based parameter updates). Both losses pair
their cost with the output map whose gradient is link(z) - target (the identity for MSE on the
output, softmax for cross-entropy on logits): `grad_at` computes it against a one-hot target, and
`nudge` carries it through the softmax read-out when there is one. The relaxation (`model.step`,
the fast step) and the read-out's EP update call these, so no module tests a loss's name.
"""
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from eqprop.errors import expect


@dataclass(frozen=True)
class Loss:
    softmax_readout: bool = False
    name: ClassVar[str] = ""
    link: ClassVar[str] = ""  # dC/dz = link(z) - target: "identity" or "softmax" (the native kernel's form)

    def cost(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example cost, shape (batch,)."""
        raise NotImplementedError

    def grad_at(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """dC/dz against a one-hot target, as a new tensor (no autograd graph)."""
        raise NotImplementedError

    def grad(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """dC/d(output), per example."""
        return self.grad_at(output, F.one_hot(y, output.shape[1]).to(output.dtype))

    def target(self, y: torch.Tensor, last: torch.Tensor, readout=None) -> torch.Tensor:
        """One-hot targets, as wide as the output the cost is measured on (the read-out's, if any)."""
        width = readout.out_features if readout is not None else last.shape[1]
        return F.one_hot(y, width).to(last.dtype)

    def nudge(self, last: torch.Tensor, target: torch.Tensor, readout=None, readout_ctx=None) -> torch.Tensor:
        """dC/ds_{n-1} at the last neuron layer `last`, through the read-out synapse when given."""
        if readout is None:
            return self.grad_at(last, target)
        return readout.feedback(self.grad_at(readout.drive(last)[0], target), readout_ctx)

    @property
    def linear_output(self) -> bool:
        """Whether the last neuron layer is linear (no activation)."""
        return False


class MSE(Loss):
    name, link = "mse", "identity"

    def __post_init__(self):
        if self.softmax_readout:
            raise ValueError(
                "loss.softmax_readout=true needs loss=cel: the softmax read-out is trained with cross-entropy "
                "(use loss=cel, or set loss.softmax_readout=false with loss=mse)")

    def cost(self, output, y):
        target = F.one_hot(y, output.shape[1]).to(output.dtype)
        return 0.5 * (output - target).pow(2).sum(dim=1)

    def grad_at(self, z, target):
        return torch.sub(z, target)


class CrossEntropy(Loss):
    name, link = "cel", "softmax"

    def cost(self, output, y):
        return F.cross_entropy(output, y, reduction="none")

    def grad_at(self, z, target):
        if z.is_complex():  # holomorphic EP: exp / sum exp is analytic; shifted by the real max for range
            e = torch.exp(z - z.real.amax(dim=1, keepdim=True))
            return (e / e.sum(dim=1, keepdim=True)).sub_(target)
        return torch.softmax(z, dim=1).sub_(target)

    @property
    def linear_output(self) -> bool:
        """Cross-entropy on the last layer itself (no read-out): that layer is linear, as in the paper."""
        return not self.softmax_readout


LOSSES = {cls.name: cls for cls in (MSE, CrossEntropy)}


def build_loss(name: str, softmax_readout: bool) -> Loss:
    if name not in LOSSES:
        raise ValueError(f"loss.name={name!r} is not a known loss; expected one of {list(LOSSES)}")
    return LOSSES[name](softmax_readout)


@dataclass
class LossConfig:
    """The `loss` config group's schema (conf/loss/*.yaml extend it)."""
    name: str = "mse"                        # mse | cel (cross-entropy)
    softmax_readout: bool = False            # output layer outside the energy, trained by cross-entropy (--softmax)

    def check(self) -> None:
        expect(self.name in LOSSES, f"loss.name={self.name!r} is not known; expected one of {list(LOSSES)}")
        expect(not (self.name == "mse" and self.softmax_readout),
               "loss.softmax_readout=true needs loss=cel (the read-out is trained with cross-entropy); "
               "use loss=cel or set loss.softmax_readout=false")
