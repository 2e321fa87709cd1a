"""The GDU check ("gradient descending updates"): step-by-step EP updates of the nudged phase
against BPTT gradients through the last T2 steps of the free phase, per parameter and neuron layer.

Semantics follow the paper's check: BPTT[key][t] is the gradient contribution of the t-th step
counted back from the end of the free phase (and, for neurons, -batch * dL/ds at that step);
EP[key][t] is the update made by the t-th nudged step, (s_{t+1} - s_t) / beta for neurons and,
for parameters, the estimator's own update rule applied to that step (`EPEstimator.traces`: for a
symmetric net -(dPhi(s_{t+1})/dtheta - dPhi(s_t)/dtheta) / beta; for a vector-field net its VF rule,
sending state and `same_update` averaging included), so that the traces sum over time to the
update training makes. The theorem says EP and BPTT match step by step.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch

from eqprop.dynamics import relax
from eqprop.errors import expect
from eqprop.estimators import EP_ESTIMATORS, OneSided

# gdu.n_examples = null: the original's numbers, 20 examples for mode=gducheck (main.py) and 5 for the
# check during training (--check-thm, x[0:5] of the batch)
ORIGINAL_N_EXAMPLES = {"gducheck": 20, "periodic": 5}

# A trace entry with |x| <= SIGN_ZERO_EPS * eps(dtype) * max|trace of its key| is rounding noise
# around an exact 0 (e.g. the difference of two equal BPTT partial sums, ~1e-19 in float64):
# it has no sign, and never counts as a sign disagreement.
SIGN_ZERO_EPS = 64


@dataclass
class GduConfig:
    """The `gdu` keys' schema: the GDU check of mode=gducheck and during training."""
    n_examples: Optional[int] = None         # examples per check (null: the original's, gdu.ORIGINAL_N_EXAMPLES)
    every: int = 0                           # > 0: GDU check every N training batches (the original --check-thm)
    betas: Optional[List[float]] = None      # mode=gducheck: the study over several betas in one run
    estimators: Optional[List[str]] = None   # the study's estimators (null: gdu_study.ESTIMATORS)

    def check(self) -> None:
        """ConfigError for gdu.* values no check can take; whether the study's estimators can run the
        rest of the config is eqprop.config.validate's."""
        expect((self.n_examples is None or self.n_examples > 0) and self.every >= 0,
               "gdu.n_examples must be > 0 (or null for the original's numbers of examples) and gdu.every >= 0")
        if self.betas is not None:
            expect(len(self.betas) >= 1 and all(v > 0 for v in self.betas),
                   f"gdu.betas={self.betas!r} must list betas > 0 for the GDU study (e.g. [0.4,0.2,0.1,0.05]), "
                   "or be null")
        for name in self.estimators or []:
            expect(name in EP_ESTIMATORS, f"gdu.estimators has {name!r}; the GDU study compares the EP estimators "
                   f"{list(EP_ESTIMATORS)} (against BPTT, its reference)")


def _param_grads(model, loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach().clone() for p, g in zip(params, grads)]


def bptt_traces(model, x, y, T1: int, T2: int):
    names, params = zip(*model.named_parameters())
    n = x.shape[0]
    with torch.no_grad():
        ref = relax(model, x, model.init_state(n, device=x.device, dtype=x.dtype), T1 - T2).state
    partial, neurons = [], []
    for K in range(T2 + 1):
        with torch.no_grad():
            start = relax(model, x, list(ref), K).state if K else list(ref)
        leaves = [s.detach().requires_grad_(True) for s in start]
        with torch.enable_grad():
            end = relax(model, x, leaves, T2 - K).state
            loss = model.loss.cost(model.output(end), y).mean()
            if K != T2:
                partial.append(_param_grads(model, loss, params))
            if K != 0:
                g = torch.autograd.grad(loss, leaves, allow_unused=True)
                neurons.append([torch.zeros_like(s) if gi is None else -n * gi for s, gi in zip(leaves, g)])
    # partial[K] sums the contributions of steps K..T2-1: difference them into single steps
    steps = [[a - b for a, b in zip(partial[K], partial[K + 1])] for K in range(T2 - 1)] + [partial[-1]]
    steps.reverse()
    neurons.reverse()
    out = {name: torch.stack([s[i] for s in steps]) for i, name in enumerate(names)}
    for k in range(model.n_layers):
        out[f"neurons_{k}"] = torch.stack([s[k].detach() for s in neurons])
    free = [s.detach() for s in end]
    return out, free


def n_examples(gdu_cfg, periodic: bool) -> int:
    """How many examples a GDU check uses: gdu.n_examples, or the original's number for that check."""
    if gdu_cfg.n_examples is not None:
        return gdu_cfg.n_examples
    return ORIGINAL_N_EXAMPLES["periodic" if periodic else "gducheck"]


def _zero_small(t: torch.Tensor, dtype) -> torch.Tensor:
    tiny = SIGN_ZERO_EPS * torch.finfo(dtype).eps * t.abs().max()
    return torch.where(t.abs() <= tiny, torch.zeros_like(t), t)


def sign_error(ep: torch.Tensor, bptt: torch.Tensor) -> float:
    """Fraction of entries (over time and elements) where EP and BPTT have opposite signs; entries
    within SIGN_ZERO_EPS machine epsilons of their trace's largest magnitude count as 0 (no sign)."""
    e = _zero_small(ep.double(), ep.dtype)
    b = _zero_small(bptt.double(), bptt.dtype)
    return (e * b < 0).double().mean().item()


def compare(bptt: dict, ep: dict) -> dict:
    """Per key: relative RMSE over time (normalised per element by the larger of the two RMS,
    then averaged over elements) and the sign error (`sign_error`)."""
    out = {}
    for key in bptt:
        b, e = bptt[key].double(), ep[key].double()
        f_g = (e - b).pow(2).mean(dim=0).sqrt()
        rel = f_g / (1e-10 + torch.maximum(e.pow(2).mean(dim=0).sqrt(), b.pow(2).mean(dim=0).sqrt()))
        out[key] = {"rmse": rel.mean().item(), "sign_error": sign_error(ep[key], bptt[key])}
    return out


def gdu_check(model, x, y, T1: int, T2: int, estimate, generator=None):
    """The check of one EP estimate (an EPEstimator): (bptt traces, ep traces, metrics per key)."""
    bptt, free = bptt_traces(model, x, y, T1, T2)
    ep, _ = estimate.traces(model, x, y, free, T2, generator)
    return bptt, ep, compare(bptt, ep)


def one_sided_name(beta: float) -> str:
    return "one_sided(+beta)" if beta > 0 else "one_sided(-beta)"


def full_check(model, x, y, T1: int, T2: int, estimate, generator=None) -> dict:
    """mode=gducheck: the checked estimate and the one-sided estimates at the betas of its phases,
    against one set of BPTT traces, as the original's gducheck (+beta one-sided always; with a third
    phase also -beta and the symmetric estimate, and the bars).

    Returns {"bptt": traces, "ep": {name: traces}, "checked": name of the estimate's own traces,
    "betas": its phases' betas, "metrics": {name: {key: {"rmse", "sign_error"}}},
    "bars": {weight key: ratio} (two phases only)}."""
    bptt, free = bptt_traces(model, x, y, T1, T2)
    own, betas = estimate.traces(model, x, y, free, T2, generator)
    beta = abs(betas[0])
    ep = {}
    # one-sided EP at +-beta where the phases have them (not at n_point's +-2 beta, ..., nor holomorphic's complex betas)
    at_beta = [b for b in betas if not isinstance(b, complex) and abs(b) == beta]
    for b in sorted({beta, *at_beta}, reverse=True):
        ep[one_sided_name(b)] = own if tuple(betas) == (b,) else OneSided(b).traces(model, x, y, free, T2)[0]
    checked = one_sided_name(betas[0]) if len(betas) == 1 else estimate.name
    ep[checked] = own
    # holomorphic EP's complex betas as {"re", "im"}: gdu.json is JSON
    plain = [{"re": b.real, "im": b.imag} if isinstance(b, complex) else b for b in betas]
    out = {"bptt": bptt, "ep": ep, "checked": checked, "betas": plain,
           "metrics": {name: compare(bptt, traces) for name, traces in ep.items()}}
    if len(betas) == 2:
        out["bars"] = bars(bptt, ep[one_sided_name(beta)], ep[one_sided_name(-beta)], own)
    return out


def bars(bptt: dict, plus: dict, minus: dict, symmetric: dict) -> dict:
    """Per weight tensor, the original's comparison of the estimates (their traces summed over the
    T2 steps): the mean over entries of |symmetric - BPTT| / mean(|+beta - BPTT|, |-beta - BPTT|),
    1 where both one-sided estimates equal BPTT. 1: symmetric EP is as close to BPTT as one-sided
    EP; 0.5: twice as close."""
    out = {}
    for key in bptt:
        if not key.endswith("weight"):
            continue
        g = bptt[key].double().sum(0)
        d_plus = (plus[key].double().sum(0) - g).abs()
        d_minus = (minus[key].double().sum(0) - g).abs()
        d_sym = (symmetric[key].double().sum(0) - g).abs()
        den = d_plus + d_minus
        ratio = torch.where(den == 0, torch.ones_like(den), 2 * d_sym / torch.where(den == 0, 1.0, den))
        out[key] = ratio.mean().item()
    return out
