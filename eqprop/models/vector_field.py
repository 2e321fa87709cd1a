"""Vector-field (asymmetric) networks: separate backward weights B_k for the feedback path.

Layer k is driven forward by f_k(s_{k-1}) and backward through B_{k+1}, a synapse shaped like the
forward synapse k+1 but with its own weights (no bias). The dynamics are no longer the gradient of
one scalar; they are the gradient of a "receiving" Phi with respect to the receiving state,

    Phi(x, send, recv) = sum_k <recv_k, f_k(send_{k-1})> + sum_k <send_{k+1}, B_{k+1}(recv_k)>
                         - beta * C(output(recv), y),

taken at recv = send = s. With B_{k+1} = W_{k+1} the model is exactly the symmetric EnergyNet.

EP updates, as in the original code (Laborieux et al., model_utils.py VF_MLP / VF_CNN):
- `same_update`: W_{k+1} and B_{k+1} both receive the average of their standard (symmetric-formula)
  updates, Phi(s^a) - Phi(s^b);
- otherwise each weight is updated from the change of its receiving layer with the sending layers
  held at one state, Phi(send, s^a) - Phi(send, s^b). The sending state is the free equilibrium,
  except for the VF-MLP's symmetric (third-phase) update, which the original sends from s^+beta
  (`symmetric_sends_from_plus`; the VF-CNN sends from the free equilibrium there too).
`sending_state` says which; the estimators pass it to `ep_grads` for training and the GDU traces alike.
"""
import math
from typing import Optional

import torch
import torch.nn as nn

from eqprop.models.energy_net import EnergyNet, State


class VectorFieldNet(EnergyNet):
    asymmetric = True

    def __init__(self, synapses, backward_synapses, activation, loss, in_shape, same_update: bool = False,
                 symmetric_sends_from_plus: bool = False):
        super().__init__(synapses, activation, loss, in_shape)
        if len(backward_synapses) != self.n_layers - 1:
            raise ValueError("a vector-field net needs one backward synapse per hidden-to-hidden connection")
        # B[k] pairs with synapses[k + 1]
        self.backward_synapses = nn.ModuleList(backward_synapses)
        self.same_update = same_update
        self.symmetric_sends_from_plus = symmetric_sends_from_plus

    def phi(self, x, state: State, beta: float = 0.0, y=None, receiving: Optional[State] = None):
        recv = state if receiving is None else receiving
        send = [x] + list(state)
        phi = 0.0
        for k in range(self.n_layers):
            phi = phi + (self.synapses[k].drive(send[k])[0] * recv[k]).flatten(1).sum(dim=1)
        for k, B in enumerate(self.backward_synapses):
            phi = phi + (B.drive(recv[k])[0] * state[k + 1]).flatten(1).sum(dim=1)
        if beta != 0.0:
            phi = phi - beta * self.loss.cost(self.output(recv), y)
        return phi

    def _feedback(self, k: int, state: State, ctx):
        B = self.backward_synapses[k]
        return B.feedback(state[k + 1], B.drive(state[k], ctx_only=True)[1])

    def feedback_synapse(self, k: int):
        return self.backward_synapses[k], False

    def sending_state(self, free, ends):
        if self.same_update:
            return None
        if self.symmetric_sends_from_plus and len(ends) == 2:  # the +beta and -beta phases
            return ends[0]
        return free

    def ep_grads(self, x, y, a, b, denom: float, send: Optional[State] = None):
        # Phi has the backward synapses' terms too: the definition by autograd, not EnergyNet's closed form.
        if send is None:
            grads = self.ep_grads_autograd(x, y, a, b, denom)
            if self.same_update:
                with torch.no_grad():
                    for k, B in enumerate(self.backward_synapses):
                        W = self.synapses[k + 1]
                        common = 0.5 * (grads[W.weight] + grads[B.weight])
                        grads[W.weight], grads[B.weight] = common, common.clone()
            return grads
        (s_a, beta_a), (s_b, beta_b) = a, b
        params = list(self.parameters())
        with torch.enable_grad():
            delta = (self.phi(x, send, beta_a, y, receiving=s_a).mean()
                     - self.phi(x, send, beta_b, y, receiving=s_b).mean())
            grads = torch.autograd.grad(-delta / denom, params, allow_unused=True)
        return {p: (torch.zeros_like(p) if g is None else g) for p, g in zip(params, grads)}

    def layer_groups(self):
        groups = super().layer_groups()
        for k, B in enumerate(self.backward_synapses):
            groups[k + 1] = groups[k + 1] + list(B.parameters())
        return groups

    @torch.no_grad()
    def angles(self) -> list:
        """Angle in degrees between each forward weight W_{k+1} and its backward twin B_{k+1}."""
        out = []
        for k, B in enumerate(self.backward_synapses):
            w, b = self.synapses[k + 1].weight.flatten(), B.weight.flatten()
            cos = (w @ b) / (w.norm() * b.norm()).clamp_min(1e-30)
            out.append(math.degrees(math.acos(max(-1.0, min(1.0, cos.item())))))
        return out
