"""What every gradient estimator returns, and the phases they share."""
from dataclasses import dataclass, field

import torch

from eqprop.dynamics import Dynamics, Relaxation, relax
from eqprop.models.dropout import has_masks


@dataclass
class Estimate:
    grads: dict                  # parameter -> gradient estimate of the batch-mean loss
    free: list                   # the free (beta = 0) state, used for predictions and activity plots
    steps: dict = field(default_factory=dict)  # steps actually used per phase
    applied: bool = False        # the estimator already moved the weights (CEP); grads is its summed update


def free_phase(model, x, dyn: Dynamics, drive0=None) -> Relaxation:
    with torch.no_grad():
        state = model.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        return relax(model, x, state, dyn.T1, dyn=dyn, drive0=drive0)


def nudged_phase(model, x, y, start, beta: float, dyn: Dynamics, drive0=None) -> Relaxation:
    with torch.no_grad():
        return relax(model, x, list(start), dyn.T2, beta, y, dyn, drive0=drive0)


def nudged_pair(model, x, y, start, beta: float, dyn: Dynamics, drive0=None):
    """The +beta and -beta nudged phases from `start`: two Relaxations.

    Batched (the default), they are one relaxation of twice the batch with a per-example beta: half
    the per-step overhead for small nets, and larger GEMMs/convolutions for big ones (measured with
    benchmarks/bench.py, benchmarks/README.md). With a tolerance both halves then stop together,
    when the slower one has converged. Dropout masks take the definitional (unbatched) path."""
    plus, minus = nudged_phases(model, x, y, start, (beta, -beta), dyn, drive0)
    return plus, minus


def nudged_phases(model, x, y, start, betas, dyn: Dynamics, drive0=None) -> list:
    """One nudged phase from `start` per beta in `betas` (real or complex): a list of Relaxations,
    run as one relaxation of len(betas) times the batch with a per-example beta (see `nudged_pair`)."""
    if drive0 is None:
        with torch.no_grad():
            drive0 = model.input_drive(x)
    if has_masks(model) or not dyn.batch_nudged:
        return [nudged_phase(model, x, y, start, b, dyn, drive0) for b in betas]
    m, k = drive0.shape[0], len(betas)
    with torch.no_grad():
        per_example = torch.cat([drive0.new_full((m,), b) for b in betas])
        both = relax(model, None, [torch.cat([s] * k) for s in start], dyn.T2, per_example, torch.cat([y] * k),
                     dyn, drive0=torch.cat([drive0] * k))
    return [Relaxation([s[i * m:(i + 1) * m] for s in both.state], both.steps, both.residual) for i in range(k)]
