"""Symmetric EP: nudged phases at +beta and -beta from the free equilibrium; bias O(beta^2)."""
import torch

from eqprop.estimators.base import Dynamics, Estimate, free_phase, nudged_pair


class Symmetric:
    name = "symmetric"

    def __init__(self, beta: float):
        self.beta = beta

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
        grads = model.ep_grads(x, y, (plus.state, b), (minus.state, -b), 2 * b, free=free.state)
        return Estimate(grads, free.state,
                        {"free": free.steps, "nudged": plus.steps, "nudged_neg": minus.steps})
