"""Holomorphic EP (Laborieux & Zenke, NeurIPS 2022): N nudged phases at the complex betas
beta_k = beta e^{2 pi i k / N}, and the gradient as the first Fourier coefficient of dPhi/dtheta
around that circle.

With F(b) = dPhi/dtheta at the equilibrium nudged by b, analytic in b when every part of the energy
is (F(b) = sum_n F_n b^n),

    (1 / N) sum_k e^{-2 pi i k / N} F(beta_k) / beta = F_1 + F_{N+1} beta^N + F_{2N+1} beta^{2N} + ...,

so -Re of it is the loss gradient -F'(0) = -F_1 up to O(beta^N): exact for a finite beta as N grows.
For even N the phases k and k + N/2 carry opposite betas and opposite weights, so they pair into one
difference, as in symmetric EP; N = 2 is symmetric EP (real betas, run on the real net, same update).

Complex states need a complex copy of the net (its `twin`: the same weights as complex numbers, so that
the closed-form steps and updates are complex-linear) and the stepwise relaxation (the fast paths and
the native kernel are real-only; `eqprop.dynamics.relax` routes complex states to `relax_stepwise`).
"""
import cmath
import copy
import warnings
from typing import Optional

import torch

from eqprop.dynamics import Dynamics
from eqprop.estimators.base import Estimate, free_phase, nudged_phases
from eqprop.estimators.ep import EPEstimator
from eqprop.estimators.n_point import DEFAULT_POINTS, points_problem
from eqprop.models import MODELS

# activations analytic around the real axis (the hard-sigmoid family has kinks); 'mysig' is my_sigmoid
ANALYTIC_ACTIVATIONS = ("tanh", "sigmoid", "my_sigmoid", "mysig")
COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64}


def root_of_unity(k: int, n: int):
    """e^{2 pi i k / n}: a float where it is real (so N = 2 stays real), exact at the quarter turns."""
    k %= n
    if 4 * k % n == 0:
        return (1.0, 1j, -1.0, -1j)[4 * k // n]
    return cmath.exp(2j * cmath.pi * k / n)


def complex_twin(model, twin=None):
    """A complex copy of `model` holding its current weights (`twin` refreshed in place when given)."""
    if twin is None:
        p = next(model.parameters())
        with warnings.catch_warnings():  # torch's note that complex parameters are a new feature
            warnings.filterwarnings("ignore", message="Complex modules")
            twin = copy.deepcopy(model).to(dtype=COMPLEX[p.dtype])
    with torch.no_grad():
        for t, p in zip(twin.parameters(), model.parameters()):
            t.copy_(p)
    return twin


class Holomorphic(EPEstimator):
    name = "holomorphic"

    def __init__(self, beta: float, points: Optional[int] = None):
        self.beta = beta
        self.points = DEFAULT_POINTS if points is None else points
        problem = points_problem(self.name, self.points)
        if problem:
            raise ValueError(problem)
        self.roots = [root_of_unity(k, self.points) for k in range(self.points)]
        self._twin, self._twin_of = None, None

    @classmethod
    def config_problem(cls, cfg) -> Optional[str]:
        """Why this run configuration cannot use holomorphic EP (None: it can): every part of the
        energy must be holomorphic."""
        m = cfg.model
        points = DEFAULT_POINTS if cfg.estimator.points is None else cfg.estimator.points
        problem = points_problem(cls.name, points)
        if problem:
            return problem
        can = (f"holomorphic EP runs model=mlp or model=cnn with average pooling (model.pools of 'a'/'i'), "
               f"an analytic activation ({', '.join(ANALYTIC_ACTIVATIONS)}), no dropout")
        kind = MODELS.get(m.name)
        # a vector-field net's update is autograd of Phi, whose complex gradient is conjugated
        if kind is None or kind.vector_field:
            return f"estimator=holomorphic cannot run model={m.name} (its update conjugates complex states); {can}"
        if m.activation not in ANALYTIC_ACTIVATIONS:
            return (f"estimator=holomorphic cannot run model.activation={m.activation} (not analytic: "
                    f"it has kinks); {can}")
        if not kind.dense and "m" in (m.pools or ""):
            return f"estimator=holomorphic cannot run model.pools={m.pools} (max pooling is not analytic); {can}"
        if m.dropouts is not None and any(p < 1 for p in m.dropouts):
            return f"estimator=holomorphic cannot run model.dropouts={m.dropouts}; {can}"
        return None

    def betas(self, generator=None):
        return tuple(self.beta * r for r in self.roots)

    def _weight(self, k: int):
        """e^{-2 pi i k / N} / N (a float where real)."""
        r = self.roots[k]
        return (r.conjugate() if isinstance(r, complex) else r) / self.points

    def update(self, model, x, y, free, ends, send, starts=None):
        """-Re sum_k e^{-2 pi i k / N} (dPhi(end_k) - dPhi(start_k)) / (N beta); for even N, phases k and
        k + N/2 in one difference. `model` is the net the states live in (the twin for complex states)."""
        n = self.points
        half = n // 2 if n % 2 == 0 else 0
        grads = None
        for k in range(half if half else n):
            denom = self.beta / self._weight(k)
            if half:
                a, b = ends[k], ends[k + half]
                a0, b0 = (starts[k], starts[k + half]) if starts is not None else (None, None)
            else:
                a, b = ends[k], (starts[k] if starts is not None else (free, 0.0))
                a0 = b0 = None
            term = model.ep_grads(x, y, a, b, denom, send=send)
            if a0 is not None:
                at_start = model.ep_grads(x, y, a0, b0, denom, send=send)
                term = {p: g - at_start[p] for p, g in term.items()}
            grads = term if grads is None else {p: g + term[p] for p, g in grads.items()}
        return {p: g.real if g.is_complex() else g for p, g in grads.items()}

    def _complex(self) -> bool:
        return any(isinstance(r, complex) for r in self.roots)

    def twin(self, model):
        if self._twin_of is not model:
            self._twin, self._twin_of = None, model
        self._twin = complex_twin(model, self._twin)
        return self._twin

    def traces(self, model, x, y, free, T2: int, generator=None):
        """The base traces, run on the complex twin; real parts (the neuron average over phases of
        ds / beta_k is the first Fourier coefficient of ds / beta)."""
        if not self._complex():
            return super().traces(model, x, y, free, T2, generator)
        twin = self.twin(model)
        dt = COMPLEX[x.dtype]
        out, betas = super().traces(twin, x.to(dt), y, [s.to(dt) for s in free], T2, generator)
        return {k: v.real for k, v in out.items()}, betas

    def __call__(self, model, x, y, dyn: Dynamics, generator: torch.Generator) -> Estimate:
        betas = self.betas(generator)
        with torch.no_grad():
            drive0 = model.input_drive(x)
        free = free_phase(model, x, dyn, drive0)
        net, xs, start = model, x, free.state
        if self._complex():
            net = self.twin(model)
            dt = COMPLEX[x.dtype]
            xs, start = x.to(dt), [s.to(dt) for s in free.state]
            with torch.no_grad():
                drive0 = net.input_drive(xs)
        phases = nudged_phases(net, xs, y, start, betas, dyn, drive0)
        send = net.sending_state(start, [ph.state for ph in phases])
        grads = self.update(net, xs, y, start, [(ph.state, b) for ph, b in zip(phases, betas)], send)
        grads = {p: grads[t] for p, t in zip(model.parameters(), net.parameters())}
        return Estimate(grads, free.state, {"free": free.steps, "nudged": phases[0].steps})
