"""Standard EP: one nudged phase at +beta; bias O(beta)."""
import torch

from eqprop.estimators.base import Dynamics, Estimate, free_phase, nudged_phase


class OneSided:
    name = "one_sided"

    def __init__(self, beta: float):
        self.beta = beta

    def sign(self, generator: torch.Generator) -> float:
        return 1.0

    def __call__(self, model, x, y, dyn: Dynamics, generator: torch.Generator) -> Estimate:
        beta = self.beta * self.sign(generator)
        with torch.no_grad():
            drive0 = model.input_drive(x)
        free = free_phase(model, x, dyn, drive0)
        nudged = nudged_phase(model, x, y, free.state, beta, dyn, drive0)
        grads = model.ep_grads(x, y, (nudged.state, beta), (free.state, 0.0), beta, free=free.state)
        return Estimate(grads, free.state, {"free": free.steps, "nudged": nudged.steps})
