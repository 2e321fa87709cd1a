"""N-point EP: the central finite-difference stencil, over nudges +-beta, +-2 beta, ..., of the
derivative of dPhi/dtheta with respect to beta at 0; bias O(beta^points). points=2 is symmetric EP.

With F(b) = dPhi/dtheta at the equilibrium nudged by b, the loss gradient is -F'(0), and

    F'(0) ~= sum_{j=1..points/2} a_j (F(j beta) - F(-j beta)) / beta,

where the a_j cancel the odd Taylor terms of orders 3, 5, ..., points - 1 (points=2: a_1 = 1/2;
points=4: a_1 = 2/3, a_2 = -1/12). All phases start from the free equilibrium and run as one batch.
"""
from fractions import Fraction
from typing import Optional

import torch

from eqprop.dynamics import Dynamics
from eqprop.estimators.base import Estimate, free_phase, nudged_phases
from eqprop.estimators.ep import EPEstimator

DEFAULT_POINTS = 4  # estimator.points=null: the first stencil past symmetric EP


def central_weights(points: int) -> list:
    """[a_1, ..., a_m] (m = points / 2) with sum_j 2 a_j j^p = 1 for p = 1 and 0 for p = 3, 5, ..., 2m - 1:
    the central-difference first derivative exact on polynomials of degree points."""
    m = points // 2
    rows = [[Fraction(2 * j ** p) for j in range(1, m + 1)] + [Fraction(int(p == 1))] for p in range(1, 2 * m, 2)]
    for c in range(m):  # Gauss-Jordan in exact fractions: m is small
        pivot = next(r for r in range(c, m) if rows[r][c] != 0)
        rows[c], rows[pivot] = rows[pivot], rows[c]
        rows[c] = [v / rows[c][c] for v in rows[c]]
        for r in range(m):
            if r != c and rows[r][c] != 0:
                rows[r] = [a - rows[r][c] * b for a, b in zip(rows[r], rows[c])]
    return [float(rows[j][m]) for j in range(m)]


def points_problem(name: str, points) -> Optional[str]:
    """Why `estimator.points` cannot run (None: it can)."""
    if not isinstance(points, int) or isinstance(points, bool) or points < 2:
        return (f"estimator.points={points!r} must be an integer >= 2 for estimator={name} "
                f"(the number of nudged phases; 2 is symmetric EP)")
    return None


class NPoint(EPEstimator):
    name = "n_point"

    def __init__(self, beta: float, points: Optional[int] = None):
        self.beta = beta
        self.points = DEFAULT_POINTS if points is None else points
        problem = self.config_problem_points(self.points)
        if problem:
            raise ValueError(problem)
        self.weights = central_weights(self.points)

    @classmethod
    def config_problem_points(cls, points) -> Optional[str]:
        problem = points_problem(cls.name, points)
        if problem is None and points % 2:
            problem = (f"estimator.points={points} must be even for estimator=n_point (the stencil pairs +j beta "
                       f"with -j beta); use {points - 1} or {points + 1}, or estimator=holomorphic for any N")
        return problem

    @classmethod
    def config_problem(cls, cfg) -> Optional[str]:
        """Why this run configuration cannot use this estimator (None: it can)."""
        points = DEFAULT_POINTS if cfg.estimator.points is None else cfg.estimator.points
        return cls.config_problem_points(points)

    def betas(self, generator=None):
        out = []
        for j in range(1, self.points // 2 + 1):
            out += [j * self.beta, -j * self.beta]
        return tuple(out)

    def update(self, model, x, y, free, ends, send, starts=None):
        """sum_j -a_j (dPhi(end_+j) - dPhi(end_-j)) / beta, less the same at the starts (the GDU traces):
        points=2 is symmetric EP's single evaluation at the two ends, denominator beta / (1/2) = 2 beta."""
        grads = None
        for j, a in enumerate(self.weights):
            term = model.ep_grads(x, y, ends[2 * j], ends[2 * j + 1], self.beta / a, send=send)
            if starts is not None:
                at_start = model.ep_grads(x, y, starts[2 * j], starts[2 * j + 1], self.beta / a, send=send)
                term = {p: g - at_start[p] for p, g in term.items()}
            grads = term if grads is None else {p: g + term[p] for p, g in grads.items()}
        return grads

    def neuron_trace(self, deltas, betas):
        """The stencil applied to the neurons' steps: sum_j a_j (ds_+j / beta - ds_-j / beta) (so that
        points=2 rounds as symmetric EP's mean of ds / beta over its two phases)."""
        b = self.beta
        return sum(a * (deltas[2 * j] / b - deltas[2 * j + 1] / b) for j, a in enumerate(self.weights))

    def __call__(self, model, x, y, dyn: Dynamics, generator: torch.Generator) -> Estimate:
        betas = self.betas(generator)
        with torch.no_grad():
            drive0 = model.input_drive(x)
        free = free_phase(model, x, dyn, drive0)
        phases = nudged_phases(model, x, y, free.state, betas, dyn, drive0)
        send = model.sending_state(free.state, [ph.state for ph in phases])
        grads = self.update(model, x, y, free.state, [(ph.state, b) for ph, b in zip(phases, betas)], send)
        return Estimate(grads, free.state, {"free": free.steps, "nudged": phases[0].steps})
