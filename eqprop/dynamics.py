"""The relaxation: iterate the model's fixed-point step towards equilibrium.

`relax` runs `FastStepper` (in place, preallocated, no autograd graph) unless autograd is recording
through the parameters or the state (BPTT's last T2 steps), in which case it runs `relax_stepwise`:
`model.step` one step at a time, differentiable, and the reference the fast path is tested against.
The constant input drive f_0(x) is computed once per relaxation. The loops themselves (the hot
path) are in eqprop.relaxation.

`Dynamics` holds the settings, from the run's `dynamics:` keys to `relax` (one object, checked by
`Dynamics.problem`). Options that cut steps, off by default (the paper's behaviour):
- update='async': even layers, then odd layers from the freshest neighbours; it converges in fewer
  iterations and keeps converging where synchronous updates oscillate (trained nets);
- tol > 0: stop once the largest state change of a step falls under tol (T is the cap). The check
  costs a pass over the state and a device-to-host sync, so it runs every `check_every` steps
  (default: see `default_check_every`).
On CUDA, `graph=True` replays the steps from a captured CUDA graph (see `GraphedRelax`).
"""
from dataclasses import dataclass
from typing import Optional

import torch

from eqprop.kernels.dense import NativeDense
from eqprop.models.dropout import has_masks
from eqprop.models.fast import FastStepper
from eqprop.models.synapses import ConvPool
from eqprop.relaxation import GraphedRelax, Relaxation, run_fast, run_native, run_stepwise

UPDATES = ("sync", "async")


@dataclass
class Dynamics:
    """The dynamics settings: the schema of the run config's `dynamics:` keys, and what the engine
    hands to the estimators as it is. The phase lengths T1, T2 and batch_nudged are the estimators',
    tf32 the engine's; `relax` reads the rest."""
    T1: int = 30                             # free-phase steps
    T2: int = 10                             # nudged-phase steps (BPTT: steps back-propagated through)
    update: str = "sync"                     # sync (paper) | async (even layers, then odd layers)
    tol: float = 0.0                         # > 0: stop a phase once the largest state change is below tol
    check_every: Optional[int] = None        # steps between tol checks (null: CUDA 10, CPU 5 dense / 1 conv)
    batch_nudged: bool = True                # +beta and -beta phases as one relaxation of twice the batch
    graph: bool = False                      # CUDA: replay the relaxation steps from a CUDA graph (ignored on CPU)
    channels_last: bool = False              # conv states channels-last: faster, rounds near-tie max-pools differently
    tf32: bool = False                       # CUDA: TF32 tensor cores for float32 convs and matmuls (~10-bit products)
    native: bool = True                      # CPU dense nets: the compiled C kernel (torch ops if no compiler)

    def problem(self) -> Optional[str]:
        """What makes these settings unusable, said as the fix, or None. The one check of them:
        config.validate reports it before any compute, `relax` refuses direct calls with it."""
        if not self.T1 > 0:
            return f"dynamics.T1={self.T1!r} must be a positive integer (steps of the free phase)"
        if not self.T2 > 0:
            return f"dynamics.T2={self.T2!r} must be a positive integer (steps of the nudged phase)"
        if self.update not in UPDATES:
            return f"dynamics.update={self.update!r} must be sync or async"
        if not self.tol >= 0:
            return f"dynamics.tol={self.tol!r} must be >= 0 (0 disables the convergence stop)"
        if self.check_every is not None and self.check_every < 1:
            return (f"dynamics.check_every={self.check_every!r} must be null (auto) or an integer >= 1 "
                    "(steps between convergence checks)")
        return None


def _checked(dyn: Optional[Dynamics]) -> Dynamics:
    if dyn is None:
        return Dynamics()
    problem = dyn.problem()
    if problem is not None:
        raise ValueError(problem)
    return dyn


def _input_drive(model, x, drive0, dyn: Dynamics):
    if drive0 is None:
        drive0 = model.input_drive(x)
    if dyn.channels_last and drive0.dim() == 4:
        drive0 = drive0.contiguous(memory_format=torch.channels_last)  # the fast path follows drive0
    return drive0


def default_check_every(device, model=None) -> int:
    """Steps between convergence checks when dynamics.check_every is null.

    A check is one pass over the state plus a device-to-host sync. On CUDA the sync stalls the
    queue: every 10 steps. On CPU a conv net's step costs far more than a check: every step. A
    dense net's step is a few small GEMMs, a few checks' worth: every 5 steps (the cadences compared
    in benchmarks/README.md)."""
    if torch.device(device).type == "cuda":
        return 10
    if model is not None and not any(isinstance(s, ConvPool) for s in model.synapses):
        return 5
    return 1


def needs_graph(model, state) -> bool:
    """True when autograd records through this relaxation (BPTT), so the in-place path cannot run."""
    if not torch.is_grad_enabled():
        return False
    return any(p.requires_grad for p in model.parameters()) or any(s.requires_grad for s in state)


def relax(model, x, state, T: int, beta=0.0, y=None, dyn: Optional[Dynamics] = None, *, drive0=None,
          fast: bool = True) -> Relaxation:
    """Run up to T steps of the dynamics `dyn` (None: `Dynamics()`, the paper's) from `state` with
    nudging `beta` towards `y`.

    dyn.update='sync': every layer from the previous state (the paper's scheme); 'async': even
    layers first, then odd layers from the freshest neighbours.
    dyn.tol > 0: stop once the largest state change of a step falls below tol (checked every
    `check_every` steps; T stays the cap).
    beta may be a tensor with one value per example, e.g. +beta and -beta halves.
    Complex states (holomorphic EP) run `relax_stepwise`: the fast paths are real-only.
    fast=False forces the step-by-step reference path; dyn.graph uses CUDA graphs on CUDA tensors;
    dyn.native runs dense nets on CPU through the compiled kernel (eqprop/kernels) when it applies.
    `state` is never modified.
    """
    dyn = _checked(dyn)
    drive0 = _input_drive(model, x, drive0, dyn)
    update, tol = dyn.update, dyn.tol
    check_every = default_check_every(drive0.device, model) if dyn.check_every is None else dyn.check_every
    # dropout, and complex states (holomorphic EP), take the definitional path
    if not fast or needs_graph(model, state) or has_masks(model) or drive0.is_complex():
        return run_stepwise(model, drive0, state, T, beta, y, update, tol, check_every)
    if dyn.graph and drive0.is_cuda:
        return GraphedRelax.get(model, drive0, state, beta, update).run(
            drive0, state, beta, y, T, tol, check_every)
    stepper = FastStepper(model, drive0, state, beta, y)
    kernel = NativeDense.build(stepper) if dyn.native else None
    if kernel is not None:
        return run_native(kernel, stepper, T, update, tol, check_every)
    return run_fast(stepper, model.n_layers, T, update, tol, check_every)


def relax_stepwise(model, x, state, T: int, beta=0.0, y=None, dyn: Optional[Dynamics] = None, *,
                   drive0=None) -> Relaxation:
    """`relax` by `model.step`, one allocating step at a time: differentiable (BPTT) and the
    reference for the fast path (the same stopping rule: checks at multiples of check_every, and T;
    check_every null here: every step)."""
    dyn = _checked(dyn)
    drive0 = _input_drive(model, x, drive0, dyn)
    check_every = 1 if dyn.check_every is None else dyn.check_every
    return run_stepwise(model, drive0, state, T, beta, y, dyn.update, dyn.tol, check_every)


def set_tf32(enabled: bool):
    """TF32 tensor cores for float32 convolutions and matmuls on CUDA (Ampere and later): faster,
    with ~10-bit mantissas in the products. Off ("ieee") matches CPU float32 to rounding.
    Note: this torch's default for cuDNN convolutions is TF32 *on*; call set_tf32(False) for IEEE."""
    mode = "tf32" if enabled else "ieee"
    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9: mixing in the legacy flags raises
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
