"""The fast relaxation step: `EnergyNet.step`'s arithmetic, done in place in preallocated buffers.

`model.step` is the definition (tested against autograd of Phi in float64); `FastStepper` computes
the same thing (tested against `model.step` in tests/test_fast_path.py) and is what `relax` runs
when no autograd graph is wanted. It runs an explicit plan (`choose_kernels`, eqprop.models.step_plan)
and changes nothing on the model. What it saves (measurements: benchmarks/README.md):
- two buffers per layer (ping-pong): a step writes the new state over the state before last, so a
  relaxation allocates once instead of every step (what dominates small nets such as the MLP);
- accumulation in place: the feedback GEMM adds onto the drive (`addmm` with `out=`), the
  activation is applied in place (its form: eqprop.activations);
- one forward pass per synapse per step: a synapse's max-pool indices route both the drive of the
  layer above and the transpose feeding back into the layer below. In async mode the indices are
  kept across half steps while the layer they were computed from is unchanged, so async costs
  no more convolutions per step than sync;
- beta may be a per-example tensor, so the +beta and -beta nudged phases run as one batch;
- every buffer has a fixed address, so a CUDA graph can capture steps and replay them.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from eqprop.activations import inplace_activation  # noqa: F401  (the in-place form of an activation)
from eqprop.models.step_plan import StepPlan, choose_kernels, choose_layout  # noqa: F401


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


class FastStepper:
    """State buffers and scratch for relaxing `model` on one batch.

    drive0: f_0(x); state: the starting state (copied, never written); beta: a float, or a tensor
    with one value per example; y: the targets when nudged. With `static=True` every input lives in
    a buffer owned by the stepper (refilled by `load`), which is what CUDA graph replay needs.
    memory_format: of the 4-d state buffers; by default that of drive0 (see `choose_layout`).
    plan: the step's plan; by default `choose_kernels` for this device and layout.
    Public: `plan`, `state` (`cur`, and `nxt` the buffers the next step writes), `load`, `step`,
    `residual`, `prime`, `dense_view`.
    """

    def __init__(self, model, drive0, state: Sequence[torch.Tensor], beta=0.0, y=None,
                 static: bool = False, memory_format=None, plan: Optional[StepPlan] = None):
        self.model = model
        self.n = n = model.n_layers
        self.static = static
        if memory_format is None:
            memory_format = choose_layout(drive0)
        self.cur = [_buffer(s, memory_format).copy_(s.detach()) for s in state]
        self.nxt = [_buffer(s, memory_format) for s in state]
        self.batch = batch = self.cur[0].shape[0]
        dev, dt = self.cur[0].device, self.cur[0].dtype
        if plan is None:
            plan = choose_kernels(model, dev, memory_format is torch.channels_last)
        self.plan = plan
        self.scale = [layer.scale for layer in plan.layers]
        self.post = [None if layer.activation is None else layer.activation.post_in_place() for layer in plan.layers]
        self.kernels = [layer.drive for layer in plan.layers]  # of forward synapse k (conv)
        self.syn = syn = list(model.synapses)  # a plain list: ModuleList indexing costs microseconds

        # Forward contexts: synapse j (1 <= j < n) reads layer j - 1; its ctx is static except the
        # max-pool indices, which live in a buffer refilled whenever the drive is computed.
        self.fwd_idx, self.fwd_ctx = {}, {}
        for j in range(1, n):
            idx = torch.empty_like(self.cur[j], dtype=torch.long) if syn[j].needs_ctx else None
            self.fwd_idx[j] = idx
            self.fwd_ctx[j] = syn[j].static_ctx(self.cur[j - 1].shape, idx)
        # Feedback into layer k < n - 1 goes through model.feedback_synapse(k), which reads layer k:
        # synapse k + 1 itself (symmetric nets: ctx shared with the drive of layer k + 1) or a
        # backward twin with its own indices and a scratch output (vector-field nets).
        # Entries: (synapse, ctx, validity key or None when the ctx is static, scratch or None, kernels).
        self.fb = []
        for k in range(n - 1):
            s_fb, shared = model.feedback_synapse(k)
            kernels = plan.layers[k].feedback
            if shared:
                self.fb.append((s_fb, self.fwd_ctx[k + 1], ("f", k + 1) if s_fb.needs_ctx else None, None, kernels))
            else:
                idx = torch.empty_like(self.cur[k + 1], dtype=torch.long) if s_fb.needs_ctx else None
                scratch = torch.empty_like(self.cur[k + 1]) if s_fb.needs_ctx else None
                self.fb.append((s_fb, s_fb.static_ctx(self.cur[k].shape, idx),
                                ("b", k) if s_fb.needs_ctx else None, scratch, kernels))
        self.track = any(entry[2] is not None for entry in self.fb)
        self.readout = syn[n] if model.loss.softmax_readout else None
        self.readout_ctx = self.readout.static_ctx(self.cur[-1].shape) if self.readout is not None else None
        self.valid = set()  # keys of contexts computed from the current value of the layer they read
        self.orders = {}
        self.copies = {}  # (id(weight), scale) -> (weight, its scaled copy, scale): one copy per pair
        self.dense = [self._dense_slots(k) for k in range(n)]
        self.base0 = None

        self.nudged = torch.is_tensor(beta) or beta != 0.0
        self.memory_format = memory_format
        if static:
            self.drive0 = drive0.detach().clone(memory_format=_fmt(drive0, memory_format))
            self.neg_beta = torch.empty((batch,) + (1,) * (self.cur[-1].dim() - 1), device=dev, dtype=dt)
            self.target = None
        self.load(drive0, None, beta, y)

    # ----- inputs ---------------------------------------------------------------------------------
    def load(self, drive0, state, beta, y):
        """(Re)fill the inputs: copies into the fixed buffers when static, references otherwise."""
        if state is not None:
            for c, s in zip(self.cur, state):
                c.copy_(s)
            self.valid.clear()
        if self.static:
            if drive0 is not self.drive0:
                self.drive0.copy_(drive0)
        elif drive0.dim() == 4:
            # once per relaxation, so that every step's arithmetic stays in the buffers' layout
            self.drive0 = drive0.contiguous(memory_format=torch.channels_last if self.memory_format is
                                            torch.channels_last else torch.contiguous_format)
        else:
            self.drive0 = drive0
        self._refresh_dense()
        if not self.nudged:
            return
        target = self.model.loss.target(y, self.cur[-1], self.readout)
        shape = (self.batch,) + (1,) * (self.cur[-1].dim() - 1)
        # the nudge is added to the scaled pre-activation: fold the activation's scale into -beta
        scale = self.scale[-1]
        if self.static:
            if self.target is None:
                self.target = torch.empty_like(target)
            self.target.copy_(target)
            b = torch.as_tensor(beta, dtype=self.neg_beta.dtype).to(self.neg_beta.device)
            self.neg_beta.copy_((b * -scale).expand(self.batch).view(shape))
        else:
            self.target = target
            self.neg_beta = ((beta.to(self.cur[-1].dtype) * -scale).view(shape) if torch.is_tensor(beta)
                             else -float(beta) * scale)

    # ----- dense layers: the activation's scale folded into scaled copies of the weights ----------
    def _dense_slots(self, k):
        """For a layer the plan marks dense (the MLP, the CNN's fc layers): the parameters its
        update reads, as [(source tensor, scaled copy or None)]: forward weight and bias of synapse
        k (k > 0), then the feedback weight (k < n - 1). None for other layers. A symmetric net's
        W_{k+1} feeds layer k + 1 and back into layer k: with one scale, one copy serves both."""
        if not self.plan.layers[k].dense:
            return None
        scale, syn, n = self.scale[k], self.syn, self.n

        def slot(t):
            if t is None or scale == 1.0:
                return (t, None)
            key = (id(t), scale)
            if key not in self.copies:
                self.copies[key] = (t, torch.empty_like(t), scale)
            return (t, self.copies[key][1])
        fwd = (slot(syn[k].weight), slot(syn[k].bias)) if k > 0 else ((None, None), (None, None))
        fb = slot(self.fb[k][0].weight) if k + 1 < n else (None, None)
        return [fwd[0], fwd[1], fb]

    def _refresh_dense(self):
        """Fill the scaled copies from the current parameters and input drive (every `load`, so a
        replayed CUDA graph sees the optimiser's in-place updates)."""
        if self.dense[0] is not None:
            scale = self.scale[0]
            if scale == 1.0 and self.drive0.stride() == self.cur[0].stride():
                self.base0 = self.drive0
            else:
                if self.base0 is None or not self.static:
                    self.base0 = torch.empty_like(self.cur[0])  # the layout of layer 0's buffers
                torch.mul(self.drive0, scale, out=self.base0)
        for src, buf, scale in self.copies.values():
            torch.mul(src.detach(), scale, out=buf)
        self.dense_fn, self.dense_weights = [], []
        for k, slots in enumerate(self.dense):
            if slots is None:
                self.dense_fn.append(None)
                self.dense_weights.append(None)
                continue
            got = [buf if buf is not None else (None if src is None else src.detach()) for src, buf in slots]
            self.dense_weights.append(tuple(got))
            self.dense_fn.append(self._dense_fn(k, *got))

    def dense_view(self) -> Optional[DenseView]:
        """The tensors a dense net's step reads, or None when some layer is not dense."""
        if not self.plan.all_dense:
            return None
        return DenseView(self.plan, self.batch, self.cur, self.nxt, self.base0, tuple(self.dense_weights),
                         self.nudged, self.neg_beta if self.nudged else None, self.target if self.nudged else None,
                         self.readout, self.model.loss)

    def _dense_fn(self, k, w, b, wb):
        """The update of dense layer k as a closure (cur, out) -> None over fixed tensors:
        out = scale * (W_k s_{k-1} + b_k + W_fb^T s_{k+1}), before the nudge and the activation.
        Built once per load, so a step pays one Python call per layer, not the branching."""
        addmm, mm, top = torch.addmm, torch.mm, k + 1 == self.n
        bcol = None if b is None else b.unsqueeze(1)
        if self.cur[k].stride(0) == 1 and self.cur[k].shape[1] > 1:
            # feature-major (see _buffer): the transposed equation out^T = W s^T + ...
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

    @property
    def state(self) -> list:
        return self.cur

    # ----- the step -------------------------------------------------------------------------------
    def step(self, layers: Optional[Sequence[int]] = None):
        """One synchronous update of `layers` (all by default), like `model.step(..., layers)`.

        Layers go top-down, so the drive of layer k + 1 (computed from layer k) has left the pool
        indices that route the feedback into layer k by the time layer k is updated."""
        key = None if layers is None else tuple(layers)
        order = self.orders.get(key)
        if order is None:
            order = self.orders[key] = tuple(sorted(range(self.n) if layers is None else set(layers), reverse=True))
        n, cur, nxt, syn, valid, track = self.n, self.cur, self.nxt, self.syn, self.valid, self.track
        dense, kernels = self.dense_fn, self.kernels
        for k in order:
            out, scale = nxt[k], self.scale[k]
            fn = dense[k]
            if fn is not None:
                fn(cur, out)
                if k == n - 1 and self.nudged:
                    self._nudge(out, cur[k])
            elif k + 1 < n:
                if k > 0:
                    syn[k].drive_into(cur[k - 1], out, self.fwd_idx[k], 1.0, kernels[k])
                    if track:
                        valid.add(("f", k))
                s_fb, ctx, key, scratch, fb_kernels = self.fb[k]
                if key is not None and key not in valid:
                    # Only the indices are wanted; the pooled output lands in scratch, or in the
                    # buffer of layer k + 1, which this call does not update (else it would be valid).
                    s_fb.drive_into(cur[k], nxt[k + 1] if scratch is None else scratch, ctx[1], 1.0, fb_kernels)
                    valid.add(key)
                s_fb.feedback_into(cur[k + 1], ctx, self.drive0 if k == 0 else out, out, scale, fb_kernels)
            else:  # the top layer: no feedback, maybe a nudge
                if k > 0:
                    syn[k].drive_into(cur[k - 1], out, self.fwd_idx[k], scale, kernels[k])
                    if track:
                        valid.add(("f", k))
                else:
                    torch.mul(self.drive0, scale, out=out)
                if self.nudged:
                    self._nudge(out, cur[k])
            if self.post[k] is not None:
                self.post[k](out)
        for k in order:
            cur[k], nxt[k] = nxt[k], cur[k]
        if track:
            for k in order:
                valid.discard(("f", k + 1))
                valid.discard(("b", k))

    def prime(self, keys):
        """Recompute the pool indices named by `keys` from the current state and mark them valid
        (a replayed CUDA graph expects the ones that were valid when it was captured)."""
        syn = self.syn
        for key in keys:
            kind, j = key
            if kind == "f":
                syn[j].drive_into(self.cur[j - 1], self.nxt[j], self.fwd_idx[j], 1.0, self.kernels[j])
            else:
                s_fb, ctx, _, scratch, kernels = self.fb[j]
                s_fb.drive_into(self.cur[j], scratch, ctx[1], 1.0, kernels)
            self.valid.add(key)

    def _nudge(self, out, last):
        """out += scale * -beta * dC/ds_{n-1}, from the current (pre-step) last layer."""
        g = self.model.loss.nudge(last, self.target, self.readout, self.readout_ctx)
        if torch.is_tensor(self.neg_beta):
            out.addcmul_(self.neg_beta, g)
        else:
            out.add_(g, alpha=self.neg_beta)

    def residual(self) -> torch.Tensor:
        """Largest |change| made by the last full step (every layer updated once since), on device.

        sub / in-place abs / amax per layer, combined on device (one host sync for the caller):
        cheaper than torch.dist(..., inf), whose norm kernel is slow on CPU, and the check may run
        every step."""
        out = None
        for c, p in zip(self.cur, self.nxt):
            r = torch.sub(c, p).abs_().amax()
            out = r if out is None else torch.maximum(out, r)
        return out


NARROW = 32  # 2-d layers at most this wide are stored feature-major (see _buffer)


def _buffer(like, fmt):
    """An uninitialised state buffer shaped like `like`. A narrow 2-d layer (an output layer of
    10 units) is stored feature-major, as the transposed view of a (width, batch) tensor: its drive
    W s + b then comes from a GEMM with a long output dimension, which MKL runs faster than the
    (batch, 10) one. Every consumer takes the (batch, width) view, whatever its strides."""
    if like.dim() == 2 and like.shape[1] <= NARROW:
        return torch.empty(like.shape[1], like.shape[0], device=like.device, dtype=like.dtype).t()
    return torch.empty_like(like, memory_format=_fmt(like, fmt))


def _fmt(t, fmt):
    return fmt if t.dim() == 4 else torch.preserve_format
