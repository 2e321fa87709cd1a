"""Symmetric EP: nudged phases at +beta and -beta from the free equilibrium; bias O(beta^2)."""
import torch

from eqprop.estimators.base import Dynamics, Estimate, free_phase, nudged_phase


class Symmetric:
    name = "symmetric"

    def __init__(self, beta: float):
        self.beta = beta

    def __call__(self, model, x, y, dyn: Dynamics, generator: torch.Generator) -> Estimate:
        b = self.beta
        with torch.no_grad():
            drive0 = model.input_drive(x)
        free = free_phase(model, x, dyn, drive0)
        plus = nudged_phase(model, x, y, free.state, b, dyn, drive0)
        minus = nudged_phase(model, x, y, free.state, -b, dyn, drive0)
        grads = model.ep_grads(x, y, (plus.state, b), (minus.state, -b), 2 * b, free=free.state)
        return Estimate(grads, free.state,
                        {"free": free.steps, "nudged": plus.steps, "nudged_neg": minus.steps})
