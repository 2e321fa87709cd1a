"""The relaxation loop: iterate the model's fixed-point step towards equilibrium.

This is the hot path. `relax` runs `FastStepper` (in place, preallocated, no autograd graph) unless
autograd is recording through the parameters or the state (BPTT's last T2 steps), in which case it
runs `relax_stepwise`: `model.step` one step at a time, differentiable, and the reference the fast
path is tested against. The constant input drive f_0(x) is computed once per relaxation.

Options that cut steps, off by default (the paper's behaviour):
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

UPDATES = ("sync", "async")


@dataclass
class Relaxation:
    state: list
    steps: int          # steps actually taken (<= T when a tolerance stops it early)
    residual: float     # largest |s_t - s_{t-1}| at the last check (nan when not measured)


def _check_args(update: str, tol: float, check_every: Optional[int]):
    if update not in UPDATES:
        raise ValueError(f"dynamics.update={update!r} must be one of {list(UPDATES)}")
    if not tol >= 0.0:
        raise ValueError(f"dynamics.tol={tol!r} must be >= 0 (0 runs all T steps)")
    if check_every is not None and check_every < 1:
        raise ValueError(f"dynamics.check_every={check_every!r} must be >= 1 (steps between convergence checks)")


def _parities(n: int, update: str):
    return (list(range(0, n, 2)), list(range(1, n, 2))) if update == "async" else (None,)


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


def relax(model, x, state, T: int, beta=0.0, y=None, *, drive0=None, update: str = "sync",
          tol: float = 0.0, check_every: Optional[int] = None, fast: bool = True,
          graph: bool = False, native: bool = True) -> Relaxation:
    """Run up to T steps of the dynamics from `state` with nudging `beta` towards `y`.

    update='sync': every layer from the previous state (the paper's scheme).
    update='async': even layers first, then odd layers from the freshest neighbours.
    tol > 0: stop once the largest state change of a step falls below tol (checked every
    `check_every` steps; T stays the cap).
    beta may be a tensor with one value per example, e.g. +beta and -beta halves.
    Complex states (holomorphic EP) run `relax_stepwise`: the fast paths are real-only.
    fast=False forces the step-by-step reference path; graph=True uses CUDA graphs on CUDA tensors;
    native=True runs dense nets on CPU through the compiled kernel (eqprop/kernels) when it applies.
    `state` is never modified.
    """
    _check_args(update, tol, check_every)
    if drive0 is None:
        drive0 = model.input_drive(x)
    if check_every is None:
        check_every = default_check_every(drive0.device, model)
    # dropout, and complex states (holomorphic EP), take the definitional path
    if not fast or needs_graph(model, state) or has_masks(model) or drive0.is_complex():
        return relax_stepwise(model, x, state, T, beta, y, drive0=drive0, update=update, tol=tol,
                              check_every=check_every)
    if graph and drive0.is_cuda:
        return GraphedRelax.get(model, drive0, state, beta, update).run(
            drive0, state, beta, y, T, tol, check_every)
    stepper = FastStepper(model, drive0, state, beta, y)
    kernel = NativeDense.build(stepper) if native else None
    if kernel is not None:
        return _run_native(kernel, stepper, T, update, tol, check_every)
    return _run(stepper, model.n_layers, T, update, tol, check_every)


def _run_native(kernel, stepper, T, update, tol, check_every) -> Relaxation:
    """`_run` with the compiled kernel: all T steps in one call, or, with a tolerance, one call per
    `check_every` steps (the same checks, at the same steps)."""
    done, residual = 0, float("nan")
    while done < T:
        chunk = T - done if tol == 0.0 else min(check_every - done % check_every, T - done)
        r = kernel.run(chunk, update)
        done += chunk
        if tol > 0.0:
            residual = r
            if residual < tol:
                break
    return Relaxation(stepper.state, done, residual)


def _run(stepper, n, T, update, tol, check_every) -> Relaxation:
    parities = _parities(n, update)
    residual = float("nan")
    for t in range(T):
        for layers in parities:
            if layers is None or layers:
                stepper.step(layers)
        if tol > 0.0 and ((t + 1) % check_every == 0 or t + 1 == T):
            residual = stepper.residual().item()
            if residual < tol:
                return Relaxation(stepper.state, t + 1, residual)
    return Relaxation(stepper.state, T, residual)


def relax_stepwise(model, x, state, T: int, beta: float = 0.0, y=None, *, drive0=None,
                   update: str = "sync", tol: float = 0.0, check_every: int = 1) -> Relaxation:
    """`relax` by `model.step`, one allocating step at a time: differentiable (BPTT) and the
    reference for the fast path (the same stopping rule: checks at multiples of check_every, and T)."""
    _check_args(update, tol, check_every)
    if drive0 is None:
        drive0 = model.input_drive(x)
    parities = _parities(model.n_layers, update)
    residual = float("nan")
    for t in range(T):
        prev = state
        for layers in parities:
            if layers:
                state = model.step(drive0, state, beta, y, layers=layers)
            elif layers is None:
                state = model.step(drive0, state, beta, y)
        if tol > 0.0 and ((t + 1) % check_every == 0 or t + 1 == T):
            residual = max((s - p).abs().max().item() for s, p in zip(state, prev))
            if residual < tol:
                return Relaxation(state, t + 1, residual)
    return Relaxation(state, T, residual)


class GraphedRelax:
    """Relaxation steps replayed from a CUDA graph (static shapes, fixed buffers).

    Two full steps are captured: after them the ping-pong buffers are back where they started, so
    the graph replays T // 2 times. One instance per (model, shapes, update, nudged), refilled for
    each batch; parameters updated in place by the optimiser need no recapture.
    """
    _cache: dict = {}
    MAX_CACHED = 8  # graphs hold device memory and their model: keep the most recent few

    def __init__(self, model, drive0, state, beta, update):
        self.model, self.update = model, update
        nudged = torch.is_tensor(beta) or beta != 0.0
        # beta lives in a buffer, so one graph serves every value and sign of it
        beta0 = torch.zeros((), device=drive0.device, dtype=drive0.dtype) if nudged else 0.0
        y0 = torch.zeros(state[0].shape[0], dtype=torch.long, device=drive0.device) if nudged else None
        self.stepper = FastStepper(model, drive0, state, beta0, y0, static=True)
        self.home = (list(self.stepper.cur), list(self.stepper.nxt))
        self.graph, self.primed = None, set()
        self.params = [p.data_ptr() for p in model.parameters()]

    @classmethod
    def get(cls, model, drive0, state, beta, update):
        nudged = torch.is_tensor(beta) or beta != 0.0
        key = (id(model), update, nudged, drive0.dtype, str(drive0.device), drive0.stride(),
               tuple((tuple(s.shape), s.stride()) for s in state))
        obj = cls._cache.get(key)
        if obj is None or obj.model is not model or obj.params != [p.data_ptr() for p in model.parameters()]:
            obj = cls(model, drive0, state, beta, update)
        cls._cache.pop(key, None)
        cls._cache[key] = obj  # most recent last
        while len(cls._cache) > cls.MAX_CACHED:
            cls._cache.pop(next(iter(cls._cache)))
        return obj

    def _steps(self, count):
        for _ in range(count):
            for layers in _parities(self.model.n_layers, self.update):
                if layers is None or layers:
                    self.stepper.step(layers)

    def _warmup(self):
        """Two real steps on a side stream, so cuDNN/cuBLAS choose algorithms and allocate
        workspaces outside the capture."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._steps(2)
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self):
        """Record two steps (nothing runs); returns the replay function."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._steps(2)
        self._graph = graph  # keeps the graph (and its memory pool) alive
        return graph.replay

    def run(self, drive0, state, beta, y, T, tol, check_every) -> Relaxation:
        st = self.stepper
        # the graph reads and writes the buffers in the places they had at capture
        st.cur[:], st.nxt[:] = self.home[0], self.home[1]
        st.load(drive0, state, beta, y)
        done = 0
        if self.graph is None:
            if T < 6:
                self._steps(T)
                return Relaxation([s.clone() for s in st.state], T, float("nan"))
            self._warmup()  # two real steps of this relaxation
            done = 2
            # the pool indices the captured steps expect to find computed (async mode)
            self.primed = set(st.valid)
            self.graph = self._capture()
        else:
            st.prime(self.primed)
        residual = float("nan")
        every = max(2, check_every - check_every % 2)
        while done + 2 <= T:
            self.graph()
            done += 2
            if tol > 0.0 and (done % every == 0 or done + 2 > T):
                residual = st.residual().item()
                if residual < tol:
                    return Relaxation([s.clone() for s in st.state], done, residual)
        self._steps(T - done)
        # the buffers belong to the next batch: hand out copies
        return Relaxation([s.clone() for s in st.state], T, residual)


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
