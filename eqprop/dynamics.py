"""The relaxation loop: iterate the model's fixed-point step towards equilibrium.

This is the hot path. It builds no autograd graph unless the caller enables grad (BPTT does,
for its last T2 steps), and the constant input drive f_0(x) is computed once per relaxation.
"""
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Relaxation:
    state: list
    steps: int          # steps actually taken (<= T when a tolerance stops it early)
    residual: float     # largest |s_t - s_{t-1}| at the last step (nan when not measured)


def relax(model, x, state, T: int, beta: float = 0.0, y=None, *, drive0=None,
          update: str = "sync", tol: float = 0.0) -> Relaxation:
    """Run up to T steps of the dynamics from `state` with nudging `beta` towards `y`.

    update='sync': every layer from the previous state (the paper's scheme).
    update='async': even layers first, then odd layers from the freshest neighbours.
    tol > 0: stop once the largest state change of a step falls below tol (T stays the cap).
    """
    if drive0 is None:
        drive0 = model.input_drive(x)
    n = model.n_layers
    parities = (list(range(0, n, 2)), list(range(1, n, 2))) if update == "async" else (None,)
    residual = float("nan")
    for t in range(T):
        prev = state
        for layers in parities:
            if layers:
                state = model.step(drive0, state, beta, y, layers=layers)
            elif layers is None:
                state = model.step(drive0, state, beta, y)
        if tol > 0.0:
            residual = max((s - p).abs().max().item() for s, p in zip(state, prev))
            if residual < tol:
                return Relaxation(state, t + 1, residual)
    return Relaxation(state, T, residual)
