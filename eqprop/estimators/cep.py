"""Continual EP (the original code's --alg CEP): the weights move at every nudged step, by the EP
update between the two consecutive states of that step.

After the free phase (T1 steps), each of the T2 nudged steps s_t -> s_{t+1} (at beta, the sign drawn
per batch with `random_sign`) sets the gradients to -(dPhi(s_{t+1}, beta) - dPhi(s_t, beta_t))/beta
and takes one optimiser step; the next step runs with the moved weights. The original divides step
t's gradient by (1 - lr * weight_decay)^(T2 - 1 - t) per layer, so that SGD's decay, applied at every
one of the T2 steps, shrinks each layer's total update as a single decay would. With `third_phase`
the state relaxes T2 steps at beta 0 (back near the free equilibrium, with the new weights) and T2
more steps at -beta, each an update -(dPhi(s_{t+1}, -beta) - dPhi(s_t, beta))/(-2 beta) as in the
original (so the -beta phase weighs half the +beta one).

With lr -> 0 the weights do not move, the per-step updates telescope, and their sum is one-sided
EP's update (its GDU traces are exactly these per-step updates: `checked_estimate`).
"""
from typing import Optional

import torch

from eqprop.dynamics import Dynamics
from eqprop.estimators.base import Estimate, free_phase
from eqprop.estimators.one_sided import OneSided
from eqprop.models import MODELS


class CEP(OneSided):
    name = "cep"
    applies_updates = True  # the engine must not step the optimiser again with Estimate.grads

    def __init__(self, beta: float, third_phase: bool = False, random_sign: bool = False):
        super().__init__(beta)
        self.third_phase, self.random_sign = third_phase, random_sign
        self.optimizer = None

    @classmethod
    def config_problem(cls, cfg) -> Optional[str]:
        """Why this run configuration cannot use continual EP (None: it can)."""
        if cfg.dynamics.tol > 0:
            return (f"estimator=cep runs exactly dynamics.T2 nudged steps, each a weight update: "
                    f"dynamics.tol={cfg.dynamics.tol} (a convergence stop) does not apply; set dynamics.tol=0")
        if cfg.dynamics.update != "sync":
            return ("estimator=cep updates the weights between synchronous steps, as the original: "
                    "set dynamics.update=sync")
        if cfg.model.name not in MODELS or MODELS[cfg.model.name].vector_field:
            return f"estimator=cep runs model=mlp or model=cnn (not model={cfg.model.name})"
        if cfg.model.dropouts is not None and any(p < 1 for p in cfg.model.dropouts):
            return "estimator=cep does not run with dropout (model.dropouts); set model.dropouts=null"
        return None

    def bind_optimizer(self, optimizer):
        self.optimizer = optimizer

    def sign(self, generator: torch.Generator) -> float:
        if not self.random_sign:
            return 1.0
        return 1.0 if torch.randint(0, 2, (1,), generator=generator).item() else -1.0

    def checked_estimate(self) -> OneSided:
        """At lr -> 0, CEP's per-step updates of its first nudged phase are one-sided EP's traces."""
        return OneSided(self.beta)

    def _decay_correction(self, steps_left: int) -> list:
        """Per parameter group: 1 / (1 - lr * weight_decay)^steps_left, the original's correction."""
        return [(1.0 - g["lr"] * g.get("weight_decay", 0.0)) ** -steps_left for g in self.optimizer.param_groups]

    def _step(self, model, x, y, prev, new, denom, total, steps_left: Optional[int]):
        """One optimiser step with the EP update between two consecutive (state, beta)."""
        grads = model.ep_grads(x, y, new, prev, denom)
        factors = self._decay_correction(steps_left) if steps_left is not None else None
        for i, group in enumerate(self.optimizer.param_groups):
            for p in group["params"]:
                total[p] += grads[p]
                p.grad = grads[p] * factors[i] if factors is not None else grads[p]
        self.optimizer.step()

    def __call__(self, model, x, y, dyn: Dynamics, generator: torch.Generator) -> Estimate:
        if self.optimizer is None:
            raise RuntimeError("estimator=cep updates the weights itself: bind_optimizer(optimizer) first")
        (beta,) = self.betas(generator)
        free = free_phase(model, x, dyn)
        total = {p: torch.zeros_like(p) for p in model.parameters()}
        state, prev_beta = list(free.state), 0.0
        with torch.no_grad():
            for t in range(dyn.T2):
                new = model.step(model.input_drive(x), state, beta, y)  # the drive of the moved weights
                self._step(model, x, y, (state, prev_beta), (new, beta), beta, total, dyn.T2 - 1 - t)
                state, prev_beta = new, beta
            if self.third_phase:
                for _ in range(dyn.T2):
                    state = model.step(model.input_drive(x), state, 0.0, y)
                prev_beta = beta
                for _ in range(dyn.T2):
                    new = model.step(model.input_drive(x), state, -beta, y)
                    self._step(model, x, y, (state, prev_beta), (new, -beta), -2 * beta, total, None)
                    state = new
        return Estimate(total, free.state, {"free": free.steps, "nudged": dyn.T2}, applied=True)
