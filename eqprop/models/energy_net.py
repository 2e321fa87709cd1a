"""A layered energy-based network: Phi, its closed-form fixed-point step, and the EP parameter update.

Neuron layers s_0..s_{n-1} sit above the clamped input x. Synapse k couples the layer below it
(x for k = 0) to s_k, and

    Phi(x, s) = sum_k <s_k, f_k(s_{k-1})>  -  beta * C(output(s), y),

where output(s) is s_{n-1}, or W_out s_{n-1} + b_out with the softmax read-out (the read-out
synapse then sits outside the energy). The dynamics are s_k <- sigma(dPhi/ds_k), with the last
layer linear under cross-entropy without read-out.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn

from eqprop.losses import Loss

State = list  # list[torch.Tensor], one tensor per neuron layer


class EnergyNet(nn.Module):
    asymmetric = False

    def __init__(self, synapses: Sequence[nn.Module], activation, loss: Loss, in_shape: tuple):
        super().__init__()
        self.synapses = nn.ModuleList(synapses)
        self.activation = activation
        self.loss = loss
        self.in_shape = tuple(in_shape)  # one example, e.g. (1, 28, 28)
        self.n_layers = len(self.synapses) - (1 if loss.softmax_readout else 0)
        if self.n_layers < 1:
            raise ValueError("the network needs at least one neuron layer below the read-out")
        with torch.no_grad():
            s = torch.zeros((1,) + self.in_shape)
            shapes = []
            for syn in self.synapses[: self.n_layers]:
                s = syn.drive(s)[0]
                shapes.append(tuple(s.shape[1:]))
        self.state_shapes = shapes

    # ----- states ---------------------------------------------------------------------------------
    def init_state(self, batch: int, device=None, dtype=None) -> State:
        p = self.synapses[0].weight
        return [torch.zeros((batch,) + sh, device=device or p.device, dtype=dtype or p.dtype)
                for sh in self.state_shapes]

    def output(self, state: State) -> torch.Tensor:
        """What the cost is measured on and predictions are read from."""
        if self.loss.softmax_readout:
            return self.synapses[-1].drive(state[-1])[0]
        return state[-1]

    def predict(self, state: State) -> torch.Tensor:
        return self.output(state).argmax(dim=1)

    # ----- Phi, the definition ----------------------------------------------------------------------
    def phi(self, x, state: State, beta: float = 0.0, y=None, receiving: Optional[State] = None):
        """Per-example primitive function. `receiving` is only meaningful for vector-field models."""
        layers = [x] + list(state)
        phi = 0.0
        for k in range(self.n_layers):
            phi = phi + (self.synapses[k].drive(layers[k])[0] * state[k]).flatten(1).sum(dim=1)
        if beta != 0.0:
            phi = phi - beta * self.loss.cost(self.output(state), y)
        return phi

    # ----- the closed-form dynamics -----------------------------------------------------------------
    def input_drive(self, x) -> torch.Tensor:
        """f_0(x): constant while x is clamped, so computed once per relaxation."""
        return self.synapses[0].drive(x)[0]

    def _feedback(self, k: int, state: State, ctx):
        """d<s_{k+1}, f_{k+1}(s_k)>/ds_k: what layer k+1 sends back to layer k."""
        return self.synapses[k + 1].feedback(state[k + 1], ctx)

    def feedback_synapse(self, k: int):
        """(synapse, shared): the synapse whose transpose carries layer k+1's feedback into layer k
        (it reads layer k); shared when it is the forward synapse k+1, whose context (pool indices)
        then comes with the drive of layer k+1."""
        return self.synapses[k + 1], True

    def _nudge(self, state: State, y, ctx_last):
        """dC/ds_{n-1}."""
        readout = self.synapses[-1] if self.loss.softmax_readout else None
        return self.loss.nudge(state[-1], self.loss.target(y, state[-1], readout), readout, ctx_last)

    def step(self, drive0, state: State, beta: float = 0.0, y=None, layers: Optional[Sequence[int]] = None) -> State:
        """One fixed-point iteration s_k <- sigma(dPhi/ds_k) for the layers in `layers` (all by default),
        each computed from `state` as given (synchronous within the call). Returns the new state list;
        layers not updated are passed through."""
        n = self.n_layers
        todo = range(n) if layers is None else layers
        nudged = torch.is_tensor(beta) or beta != 0.0  # a tensor: one beta per example (batched phases)
        need_drive = set()
        need_ctx = set()
        for k in todo:
            if k > 0:
                need_drive.add(k)
            if k + 1 < n or (k == n - 1 and self.loss.softmax_readout and nudged):
                need_ctx.add(k)
        drives, ctxs = {0: drive0}, {}
        for k in sorted(need_drive | {j + 1 for j in need_ctx if j + 1 < n}):
            out, ctx = self.synapses[k].drive(state[k - 1], ctx_only=k not in need_drive)
            drives[k] = out
            ctxs[k - 1] = ctx
        if nudged and self.loss.softmax_readout and (n - 1) in todo:
            ctxs[n - 1] = self.synapses[n].drive(state[n - 1], ctx_only=True)[1]
        new = list(state)
        for k in todo:
            g = drives[k]
            if k + 1 < n:
                g = g + self._feedback(k, state, ctxs[k])
            if k == n - 1 and nudged:
                b = beta.view((-1,) + (1,) * (g.dim() - 1)) if torch.is_tensor(beta) else beta
                g = g - b * self._nudge(state, y, ctxs.get(n - 1))
            new[k] = g if (k == n - 1 and self.loss.linear_output) else self.activation(g)
        return new

    # ----- parameter updates ------------------------------------------------------------------------
    def sending_state(self, free: State, ends: Sequence[State]) -> Optional[State]:
        """The state a vector-field rule holds the sending layers at, given the free state and the
        nudged phases' ends; None: the plain rule, Phi at each state (every symmetric net)."""
        return None

    def ep_grads(self, x, y, a, b, denom: float, send: Optional[State] = None):
        """Gradient estimate -(dPhi(s_a, beta_a)/dtheta - dPhi(s_b, beta_b)/dtheta) / denom,
        averaged over the batch; `a` and `b` are (state, beta) pairs. Returns {param: grad}.
        `send` only matters to vector-field nets (see `sending_state`).

        Closed form, checked against `ep_grads_autograd` (autograd of Phi, the definition): Phi is
        bilinear in each synapse's weights, so the difference of the two terms of the input synapse
        is one weight-gradient of the state difference (x and its pool indices are shared), and the
        other synapses take one weight-gradient of the two states stacked along the batch. That is a
        quarter of autograd's work on the input synapse, where an MLP spends most of its FLOPs."""
        (s_a, beta_a), (s_b, beta_b) = a, b
        n, syn, m = self.n_layers, self.synapses, x.shape[0]
        scale = -1.0 / (denom * m)  # applied to the (small) state side, before the weight gradients
        with torch.no_grad():
            sums = {0: syn[0].param_grads(x, torch.sub(s_a[0], s_b[0]).mul_(scale),
                                          syn[0].drive(x, ctx_only=True)[1])}
            for k in range(1, n):
                src = torch.cat([s_a[k - 1], s_b[k - 1]])
                g = torch.cat([s_a[k] * scale, s_b[k] * -scale])
                sums[k] = syn[k].param_grads(src, g, syn[k].drive(src, ctx_only=True)[1])
            if self.loss.softmax_readout and (beta_a != 0.0 or beta_b != 0.0):
                # -beta C(W_out s + b_out, y) is the only term of Phi with the read-out's weights
                readout = syn[n]
                src = torch.cat([s_a[-1], s_b[-1]])
                g = self.loss.grad(readout.drive(src)[0], torch.cat([y, y]))
                g = torch.cat([g[:m] * (-beta_a * scale), g[m:] * (beta_b * scale)])
                sums[n] = readout.param_grads(src, g, readout.drive(src, ctx_only=True)[1])
            grads = {}
            for k, s in enumerate(syn):
                got = sums.get(k)
                for i, p in enumerate(s.parameters()):
                    grads[p] = torch.zeros_like(p) if got is None else got[i].view_as(p)
        return {p: grads[p] for p in self.parameters()}

    def ep_grads_autograd(self, x, y, a, b, denom: float, send: Optional[State] = None):
        """`ep_grads` by autograd of Phi at the two states: the definition."""
        (s_a, beta_a), (s_b, beta_b) = a, b
        params = [p for p in self.parameters()]
        with torch.enable_grad():
            delta = self.phi(x, s_a, beta_a, y).mean() - self.phi(x, s_b, beta_b, y).mean()
            grads = torch.autograd.grad(-delta / denom, params, allow_unused=True)
        return {p: (torch.zeros_like(p) if g is None else g) for p, g in zip(params, grads)}

    def layer_groups(self):
        """Parameters grouped per synapse (forward layer index), for layer-wise learning rates."""
        return [list(syn.parameters()) for syn in self.synapses]
