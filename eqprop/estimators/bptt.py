"""Backpropagation through time on the same dynamics: T1 - T2 steps without a graph, then T2
steps with one, and the loss at the last step back-propagated through those T2 steps."""
from dataclasses import replace

import torch

from eqprop.dynamics import Dynamics, relax
from eqprop.estimators.base import Estimate
from eqprop.estimators.one_sided import OneSided


class BPTT:
    name = "bptt"

    def __init__(self, gdu_beta: float = 0.1):
        self.gdu_beta = gdu_beta  # BPTT trains without beta; it only sets the EP estimate its GDU check measures

    def checked_estimate(self) -> OneSided:
        """BPTT has no nudged phase: the GDU check of a BPTT run measures one-sided EP at estimator.beta."""
        return OneSided(self.gdu_beta)

    def __call__(self, model, x, y, dyn: Dynamics, generator: torch.Generator) -> Estimate:
        params = list(model.parameters())
        with torch.no_grad():
            state = model.init_state(x.shape[0], device=x.device, dtype=x.dtype)
            # the graph-free head takes the fast path; the paper's semantics (fixed T1, synchronous)
            # are kept so the gradient is the one of the dynamics the EP estimators run by default
            head = relax(model, x, state, dyn.T1 - dyn.T2, dyn=replace(dyn, update="sync", tol=0.0))
        with torch.enable_grad():
            tail = relax(model, x, [s.detach() for s in head.state], dyn.T2)
            loss = model.loss.cost(model.output(tail.state), y).mean()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = {p: (torch.zeros_like(p) if g is None else g) for p, g in zip(params, grads)}
        return Estimate(grads, [s.detach() for s in tail.state], {"free": dyn.T1})
