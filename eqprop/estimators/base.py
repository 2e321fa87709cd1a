"""What every gradient estimator returns, and the free phase they share."""
from dataclasses import dataclass, field

import torch

from eqprop.dynamics import Relaxation, relax


@dataclass
class Estimate:
    grads: dict                  # parameter -> gradient estimate of the batch-mean loss
    free: list                   # the free (beta = 0) state, used for predictions and activity plots
    steps: dict = field(default_factory=dict)  # steps actually used per phase


@dataclass
class Dynamics:
    T1: int
    T2: int
    update: str = "sync"
    tol: float = 0.0


def free_phase(model, x, dyn: Dynamics, drive0=None) -> Relaxation:
    with torch.no_grad():
        state = model.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        return relax(model, x, state, dyn.T1, drive0=drive0, update=dyn.update, tol=dyn.tol)


def nudged_phase(model, x, y, start, beta: float, dyn: Dynamics, drive0=None) -> Relaxation:
    with torch.no_grad():
        return relax(model, x, list(start), dyn.T2, beta, y, drive0=drive0, update=dyn.update, tol=dyn.tol)
