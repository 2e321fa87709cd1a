"""The original way of running EP, for the benchmarks to check and time eqprop against.

`Reference` is the original implementation's way: neurons are leaf tensors that require grad,
every step is `torch.autograd.grad(Phi.sum(), neurons)` followed by the activation, the EP update
is autograd of Phi at the equilibria, and BPTT differentiates through that same autograd-of-Phi
dynamics (create_graph=True over the last T2 steps). `eqprop_step` / `eqprop_states` run eqprop's
side the way the app does (fast relaxation, closed-form EP update), on the same net, weights and
batch (`build`).
"""
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from eqprop.estimators import BPTT, Symmetric, build_estimator
from eqprop.losses import build_loss
from eqprop.models import build_model
from eqprop.models.synapses import ConvPool

BETA = 0.5


def model_cfg(name):
    if name == "mlp":
        return SimpleNamespace(name="mlp", archi=[784, 512, 10], activation="my_hard_sig", scale=None,
                               same_update=False), 1, 28
    return SimpleNamespace(name="cnn", channels=[128, 256, 512, 512], kernels=[3, 3, 3, 3],
                           strides=[1, 1, 1, 1], paddings=[1, 1, 1, 0], pools="mmmm", fc=[10],
                           activation="my_hard_sig", scale=None, same_update=False), 3, 32


def build(name, batch, device, seed=0, loss="mse", readout=False):
    torch.manual_seed(seed)
    cfg, c, size = model_cfg(name)
    model = build_model(cfg, build_loss(loss, readout), c, size).to(device)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((batch,) + model.in_shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    return model, x, y


# ----- the reference: the original way ------------------------------------------------------------
class Reference:
    """EP the original way, on an eqprop model's parameters; Phi is written out here again (not
    eqprop's `model.phi`) so the check does not lean on the code it checks."""

    def __init__(self, model):
        self.m = model

    def phi(self, x, s, beta, y):
        m, layers = self.m, [x] + list(s)
        phi = 0.0
        for k in range(m.n_layers):
            phi = phi + (self._forward(m.synapses[k], layers[k]) * s[k]).flatten(1).sum(1)
        if beta != 0.0:
            phi = phi - beta * self.cost(s, y)
        return phi

    @staticmethod
    def _forward(syn, inp):
        if isinstance(syn, ConvPool):
            h = F.conv2d(inp, syn.weight, syn.bias, syn.stride, syn.padding)
            return {"m": lambda t: F.max_pool2d(t, 2, 2), "a": lambda t: F.avg_pool2d(t, 2, 2),
                    "i": lambda t: t}[syn.pool](h)
        return F.linear(inp.flatten(1), syn.weight, syn.bias)

    # the costs written out again, by the loss's config name (not eqprop's Loss classes, which this checks)
    COSTS = {"mse": lambda out, y: 0.5 * (out - F.one_hot(y, out.shape[1]).to(out.dtype)).pow(2).sum(1),
             "cel": lambda out, y: F.cross_entropy(out, y, reduction="none")}

    def cost(self, s, y):
        m = self.m
        out = self._forward(m.synapses[-1], s[-1]) if m.loss.softmax_readout else s[-1]
        return self.COSTS[m.loss.name](out, y)

    def step(self, x, y, neurons, beta, create_graph=False):
        phi = self.phi(x, neurons, beta, y)
        grads = torch.autograd.grad(phi.sum(), neurons, create_graph=create_graph)
        new = [self.m.activation(g) for g in grads]
        if self.m.loss.linear_output:
            new[-1] = grads[-1]
        if not create_graph:
            new = [t.detach().requires_grad_(True) for t in new]
        return new

    def relax(self, x, y, neurons, T, beta=0.0, create_graph=False):
        for _ in range(T):
            neurons = self.step(x, y, neurons, beta, create_graph)
        return neurons

    def init(self, x):
        return [torch.zeros((x.shape[0],) + sh, device=x.device, dtype=x.dtype, requires_grad=True)
                for sh in self.m.state_shapes]

    def leaves(self, state):
        return [s.detach().clone().requires_grad_(True) for s in state]

    def symmetric(self, x, y, T1, T2, beta):
        free = self.relax(x, y, self.init(x), T1)
        plus = self.relax(x, y, self.leaves(free), T2, beta)
        minus = self.relax(x, y, self.leaves(free), T2, -beta)
        params = list(self.m.parameters())
        delta = self.phi(x, plus, beta, y).mean() - self.phi(x, minus, -beta, y).mean()
        grads = torch.autograd.grad(-delta / (2 * beta), params)
        return {"free": free, "plus": plus, "minus": minus}, dict(zip(params, grads))

    def bptt(self, x, y, T1, T2):
        head = self.relax(x, y, self.init(x), T1 - T2)
        tail = self.relax(x, y, head, T2, create_graph=True)
        params = list(self.m.parameters())
        loss = self.cost(tail, y).mean()
        # with fewer tail steps than layers, the first synapses cannot reach the output: zero
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return {"final": tail}, {p: torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)}


# ----- eqprop's side, the way the app calls it ------------------------------------------------------
def eqprop_step(model, x, y, cfg, dyn, gen):
    return build_estimator(cfg["est"], BETA)(model, x, y, dyn, gen)


def eqprop_states(model, x, y, cfg, dyn, gen):
    """States and update for the check: the same functions `eqprop_step` runs."""
    if cfg["est"] == "bptt":
        est = BPTT()(model, x, y, dyn, gen)
        return {"final": est.free}, est.grads, est.steps
    est = Symmetric(BETA)
    free, plus, minus = est.phases(model, x, y, dyn)
    send = model.sending_state(free.state, [plus.state, minus.state])
    grads = est.update(model, x, y, free.state, [(plus.state, BETA), (minus.state, -BETA)], send)
    return ({"free": free.state, "plus": plus.state, "minus": minus.state}, grads,
            {"free": free.steps, "nudged": plus.steps})


def reference_step(ref, x, y, cfg):
    if cfg["est"] == "bptt":
        return ref.bptt(x, y, cfg["T1"], cfg["T2"])
    return ref.symmetric(x, y, cfg["T1"], cfg["T2"], BETA)


def update_error64(model, x, y, cfg, ref_states, ref_grads, fast_grads):
    """For EP: each side's float32 update against the exact update at the reference's equilibria
    (the definition, autograd of Phi, evaluated in float64 at the reference's float32 states).

    Why: the reference subtracts two large autograd terms (dPhi/dtheta at +beta and at -beta), so
    in float32 its input-layer update loses digits to cancellation, by more than 1e-4 on the paper
    CNN; eqprop's closed form subtracts the states first. Comparing the two updates with each other
    would then only measure the reference's rounding."""
    if cfg["est"] == "bptt":
        return None
    m64 = build(cfg["model"], cfg["batch"], x.device)[0].double()
    with torch.no_grad():
        for p, q in zip(m64.parameters(), model.parameters()):
            p.copy_(q)
    plus = [s.detach().double() for s in ref_states["plus"]]
    minus = [s.detach().double() for s in ref_states["minus"]]
    want = m64.ep_grads_autograd(x.double(), y, (plus, BETA), (minus, -BETA), 2 * BETA)
    return {side: max((grads[p].double() - want[q]).abs().max().item()
                      for p, q in zip(model.parameters(), m64.parameters()))
            for side, grads in (("reference", ref_grads), ("eqprop", fast_grads))}
