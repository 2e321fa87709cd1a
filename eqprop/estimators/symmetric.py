"""Symmetric EP: nudged phases at +beta and -beta from the free equilibrium; bias O(beta^2)."""
import torch

from eqprop.dynamics import Dynamics
from eqprop.estimators.base import Estimate, free_phase, nudged_pair
from eqprop.estimators.ep import EPEstimator


class Symmetric(EPEstimator):
    name = "symmetric"

    def __init__(self, beta: float):
        self.beta = beta

    def betas(self, generator=None):
        return (self.beta, -self.beta)

    def update(self, model, x, y, free, ends, send, starts=None):
        """-(dPhi(end+) - dPhi(start+)) / (2 beta) + (dPhi(end-) - dPhi(start-)) / (2 beta): the half-sum
        of the two one-sided estimates. With both phases starting from the free state (training) the
        start terms cancel exactly, and it is one evaluation of the rule at the two ends."""
        plus, minus = ends
        grads = model.ep_grads(x, y, plus, minus, 2 * self.beta, send=send)
        if starts is not None:
            at_start = model.ep_grads(x, y, starts[0], starts[1], 2 * self.beta, send=send)
            grads = {p: g - at_start[p] for p, g in grads.items()}
        return grads

    def phases(self, model, x, y, dyn: Dynamics, drive0=None):
        """(free, plus, minus) Relaxations."""
        if drive0 is None:
            with torch.no_grad():
                drive0 = model.input_drive(x)
        free = free_phase(model, x, dyn, drive0)
        plus, minus = nudged_pair(model, x, y, free.state, self.beta, dyn, drive0)
        return free, plus, minus

    def __call__(self, model, x, y, dyn: Dynamics, generator: torch.Generator) -> Estimate:
        b = self.beta
        free, plus, minus = self.phases(model, x, y, dyn)
        send = model.sending_state(free.state, [plus.state, minus.state])
        grads = self.update(model, x, y, free.state, [(plus.state, b), (minus.state, -b)], send)
        return Estimate(grads, free.state,
                        {"free": free.steps, "nudged": plus.steps, "nudged_neg": minus.steps})
