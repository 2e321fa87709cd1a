"""The fast step's dense layers (the MLP, a CNN's fc layers): weights pre-scaled by the layer's
activation scale, and each layer's update as a closure over fixed tensors.

With a power-of-two scale, scaling the weights and the input drive once per relaxation gives bitwise
the products of scaling each GEMM's output, and a plain addmm skips the separate scaling pass
(see eqprop.models.step_plan.choose_kernels). `FastStepper` owns one `DenseLayers` and calls
`refresh` on every `load`; a step then pays one Python call per dense layer.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from eqprop.models.step_plan import StepPlan


@dataclass(frozen=True)
class DenseView:
    """What a dense net's step reads, for kernels that run the step themselves (eqprop.kernels.dense).
    Valid until the stepper's next `load`; `cur` and `nxt` are the stepper's own lists, whose
    entries swap after every step."""
    plan: StepPlan
    batch: int
    cur: list
    nxt: list
    base0: torch.Tensor     # scale_0 * f_0(x), layer 0's constant drive
    weights: tuple          # per layer (W_k, b_k, feedback weight), multiplied by the layer's scale; None: absent
    nudged: bool
    neg_beta: object        # -beta * the top layer's scale: a float, or a (batch, 1) tensor
    target: Optional[torch.Tensor]
    readout: Optional[torch.nn.Module]
    loss: object


class DenseLayers:
    """synapses: the model's synapses; feedback[k]: the synapse that feeds layer k + 1 back into
    layer k (k < n - 1). static: keep base0 at one address across refreshes (CUDA graph replay).
    Public after `refresh`: `slots`, `base0`, `weights` and `fns` (per layer; None: not dense)."""

    def __init__(self, plan: StepPlan, synapses, feedback, static: bool):
        self.plan, self.n, self.static = plan, len(plan.layers), static
        self.copies = {}  # (id(weight), scale) -> (weight, its scaled copy, scale): one copy per pair
        self.slots = [self._slots(k, synapses, feedback) for k in range(self.n)]
        self.base0 = None
        self.weights, self.fns = [], []

    def _slots(self, k, syn, feedback):
        """For a layer the plan marks dense: the parameters its update reads, as [(source tensor,
        scaled copy or None)]: forward weight and bias of synapse k (k > 0), then the feedback
        weight (k < n - 1). None for other layers. A symmetric net's W_{k+1} feeds layer k + 1 and
        back into layer k: with one scale, one copy serves both."""
        layer = self.plan.layers[k]
        if not layer.dense:
            return None
        scale = layer.scale

        def slot(t):
            if t is None or scale == 1.0:
                return (t, None)
            key = (id(t), scale)
            if key not in self.copies:
                self.copies[key] = (t, torch.empty_like(t), scale)
            return (t, self.copies[key][1])
        fwd = (slot(syn[k].weight), slot(syn[k].bias)) if k > 0 else ((None, None), (None, None))
        fb = slot(feedback[k].weight) if k + 1 < self.n else (None, None)
        return [fwd[0], fwd[1], fb]

    def refresh(self, drive0, cur):
        """Fill the scaled copies from the current parameters and input drive, and rebuild the
        closures (every `load`, so a replayed CUDA graph sees the optimiser's in-place updates)."""
        if self.slots[0] is not None:
            scale = self.plan.layers[0].scale
            if scale == 1.0 and drive0.stride() == cur[0].stride():
                self.base0 = drive0
            else:
                if self.base0 is None or not self.static:
                    self.base0 = torch.empty_like(cur[0])  # the layout of layer 0's buffers
                torch.mul(drive0, scale, out=self.base0)
        for src, buf, scale in self.copies.values():
            torch.mul(src.detach(), scale, out=buf)
        self.weights, self.fns = [], []
        for k, slots in enumerate(self.slots):
            if slots is None:
                self.weights.append(None)
                self.fns.append(None)
                continue
            got = [buf if buf is not None else (None if src is None else src.detach()) for src, buf in slots]
            self.weights.append(tuple(got))
            self.fns.append(self._fn(k, cur[k], *got))

    def _fn(self, k, layer, w, b, wb):
        """The update of dense layer k as a closure (cur, out) -> None over fixed tensors:
        out = scale * (W_k s_{k-1} + b_k + W_fb^T s_{k+1}), before the nudge and the activation.
        `layer`: a buffer of layer k, whose strides say its layout."""
        addmm, mm, top = torch.addmm, torch.mm, k + 1 == self.n
        bcol = None if b is None else b.unsqueeze(1)
        if layer.stride(0) == 1 and layer.shape[1] > 1:
            # feature-major (see fast._buffer): the transposed equation out^T = W s^T + ...
            if k == 0:
                base_t, wb_t = self.base0.t(), wb.t()
                return lambda cur, out: addmm(base_t, wb_t, cur[1].t(), out=out.t())
            wb_t = None if top else wb.t()

            def fm(cur, out):
                src, o = cur[k - 1], out.t()
                src = src.flatten(1).t() if src.dim() != 2 else src.t()
                if b is None:
                    mm(w, src, out=o)
                else:
                    addmm(bcol, w, src, out=o)
                if wb_t is not None:
                    o.addmm_(wb_t, cur[k + 1].t())
            return fm
        if k == 0:
            base = self.base0
            return lambda cur, out: addmm(base, cur[1], wb, out=out)
        w_t = w.t()

        def bm(cur, out):
            src = cur[k - 1]
            if src.dim() != 2:
                src = src.flatten(1)
            if b is None:
                mm(src, w_t, out=out)
            else:
                addmm(b, src, w_t, out=out)
            if not top:
                out.addmm_(cur[k + 1], wb)
        return bm
