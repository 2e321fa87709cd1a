"""Cost functions C(output, y) that nudge the network, with their closed-form gradients.

`cost` is differentiable (used for BPTT and for the Phi-based parameter updates); `grad` is the
closed-form dC/d(output) used inside the relaxation loop, where no autograd graph is built.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Loss:
    name: str
    softmax_readout: bool = False

    def cost(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example cost, shape (batch,)."""
        if self.name == "mse":
            target = F.one_hot(y, output.shape[1]).to(output.dtype)
            return 0.5 * (output - target).pow(2).sum(dim=1)
        return F.cross_entropy(output, y, reduction="none")

    def grad(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """dC/d(output), per example."""
        target = F.one_hot(y, output.shape[1]).to(output.dtype)
        if self.name == "mse":
            return output - target
        return torch.softmax(output, dim=1) - target

    @property
    def linear_output(self) -> bool:
        """Cross-entropy on the last layer itself (no read-out): that layer is linear, as in the paper."""
        return self.name == "cel" and not self.softmax_readout


LOSSES = ("mse", "cel")


def build_loss(name: str, softmax_readout: bool) -> Loss:
    if name not in LOSSES:
        raise ValueError(f"loss.name={name!r} is not a known loss; expected one of {list(LOSSES)}")
    if name == "mse" and softmax_readout:
        raise ValueError(
            "loss.softmax_readout=true needs loss=cel: the softmax read-out is trained with cross-entropy "
            "(use loss=cel, or set loss.softmax_readout=false with loss=mse)"
        )
    return Loss(name, softmax_readout)
