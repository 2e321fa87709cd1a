"""What every EP estimate shares: nudged phases from the free equilibrium, and one update rule that
defines both the training update and the GDU check's per-step traces.

An EP estimator says which nudged phases it runs (`betas`) and how their ends combine into an update
(`update`); the model supplies the rule for one pair of states (`model.ep_grads`, with a vector-field
net's sending state from `model.sending_state`). Training applies `update` to the phases' ends, with
every phase starting from the free state at beta 0. The GDU check applies the same `update` to each
single step of the same phases (start: the state before the step, at beta 0 for the first step, the
phase's beta after), with the same sending state, so that the rule is linear in Phi's parameter
gradient and the sum of the traces over time is the training update, term by term.
"""
from typing import Optional, Sequence

import torch

from eqprop.models.energy_net import State


class EPEstimator:
    beta: float

    def betas(self, generator: Optional[torch.Generator]) -> tuple:
        """The betas of the nudged phases, each run from the free equilibrium."""
        raise NotImplementedError

    def update(self, model, x, y, free: State, ends: Sequence, send, starts: Optional[Sequence] = None) -> dict:
        """{param: gradient estimate} from the phases' (state, beta) `ends` and `starts` (None: each phase
        starts from `free` at beta 0, the training update); `send` is model.sending_state(...)."""
        raise NotImplementedError

    def neuron_trace(self, deltas: Sequence, betas: Sequence):
        """One step's neuron update from each phase's state change: the mean of (s_{t+1} - s_t) / beta."""
        return sum(d / b for d, b in zip(deltas, betas)) / len(betas)

    def checked_estimate(self) -> "EPEstimator":
        """The EP estimate the GDU check measures for a run of this estimator: itself."""
        return self

    def traces(self, model, x, y, free: State, T2: int, generator: Optional[torch.Generator] = None):
        """Per-step EP updates of the nudged phases from `free`: ({key: tensor [T2, ...]}, betas).

        Parameters: `update` applied to each step, so they sum over time to the training update.
        Neurons: (s_{t+1} - s_t) / beta, averaged over the phases (the half-sum for symmetric EP)."""
        betas = self.betas(generator)
        with torch.no_grad():
            drive0 = model.input_drive(x)
            paths = []
            for b in betas:
                path = [list(free)]
                for _ in range(T2):
                    path.append(model.step(drive0, path[-1], b, y))
                paths.append(path)
            send = model.sending_state(free, [path[-1] for path in paths])
        names = [name for name, _ in model.named_parameters()]
        params = list(model.parameters())
        p_steps, n_steps = [], []
        for t in range(T2):
            ends = [(path[t + 1], b) for path, b in zip(paths, betas)]
            starts = [(path[t], b if t else 0.0) for path, b in zip(paths, betas)]
            grads = self.update(model, x, y, free, ends, send, starts)
            p_steps.append([grads[p].detach() for p in params])
            n_steps.append([self.neuron_trace([path[t + 1][k] - path[t][k] for path in paths], betas)
                            for k in range(model.n_layers)])
        out = {name: torch.stack([s[i] for s in p_steps]) for i, name in enumerate(names)}
        for k in range(model.n_layers):
            out[f"neurons_{k}"] = torch.stack([s[k] for s in n_steps])
        return out, betas
