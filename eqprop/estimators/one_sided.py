"""Standard EP: one nudged phase at +beta; bias O(beta)."""
import torch

from eqprop.dynamics import Dynamics
from eqprop.estimators.base import Estimate, free_phase, nudged_phase
from eqprop.estimators.ep import EPEstimator


class OneSided(EPEstimator):
    name = "one_sided"

    def __init__(self, beta: float):
        self.beta = beta

    def sign(self, generator: torch.Generator) -> float:
        return 1.0

    def betas(self, generator):
        return (self.beta * self.sign(generator),)

    def update(self, model, x, y, free, ends, send, starts=None):
        ((s_end, beta),) = ends
        start = (free, 0.0) if starts is None else starts[0]
        return model.ep_grads(x, y, (s_end, beta), start, beta, send=send)

    def __call__(self, model, x, y, dyn: Dynamics, generator: torch.Generator) -> Estimate:
        (beta,) = self.betas(generator)
        with torch.no_grad():
            drive0 = model.input_drive(x)
        free = free_phase(model, x, dyn, drive0)
        nudged = nudged_phase(model, x, y, free.state, beta, dyn, drive0)
        send = model.sending_state(free.state, [nudged.state])
        grads = self.update(model, x, y, free.state, [(nudged.state, beta)], send)
        return Estimate(grads, free.state, {"free": free.steps, "nudged": nudged.steps})
