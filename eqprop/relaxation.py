"""The loops of a relaxation and what they return: FastStepper's in-place steps (`run_fast`), the
compiled kernel's (`run_native`), `model.step`'s allocating, differentiable steps (`run_stepwise`)
and CUDA graph replay (`GraphedRelax`). `eqprop.dynamics.relax` checks the settings and picks one;
these take them resolved (update, tol, check_every), so a loop reads no settings object.
"""
from dataclasses import dataclass

import torch

from eqprop.models.fast import FastStepper


@dataclass
class Relaxation:
    state: list
    steps: int          # steps actually taken (<= T when a tolerance stops it early)
    residual: float     # largest |s_t - s_{t-1}| at the last check (nan when not measured)


def _parities(n: int, update: str):
    return (list(range(0, n, 2)), list(range(1, n, 2))) if update == "async" else (None,)


def run_native(kernel, stepper, T, update, tol, check_every) -> Relaxation:
    """`run_fast` with the compiled kernel: all T steps in one call, or, with a tolerance, one call per
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


def run_fast(stepper, n, T, update, tol, check_every) -> Relaxation:
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


def run_stepwise(model, drive0, state, T, beta, y, update, tol, check_every) -> Relaxation:
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
