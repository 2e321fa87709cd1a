"""The fast relaxation step: `EnergyNet.step`'s arithmetic, done in place in preallocated buffers.

`model.step` is the definition (tested against autograd of Phi in float64); `FastStepper` computes
the same thing (tested against `model.step` in tests/test_fast_path.py) and is what `relax` runs
when no autograd graph is wanted. It runs an explicit plan (`choose_kernels`, eqprop.models.step_plan)
and changes nothing on the model. What it saves (measurements: benchmarks/README.md):
- two buffers per layer (ping-pong): a step writes the new state over the state before last, so a
  relaxation allocates once instead of every step (what dominates small nets such as the MLP);
- accumulation in place: the feedback GEMM adds onto the drive (`addmm` with `out=`), the
  activation is applied in place (its form: eqprop.activations); dense layers run on weights
  pre-scaled by the activation's scale (eqprop.models.dense_layers);
- one forward pass per synapse per step: a synapse's max-pool indices route both the drive of the
  layer above and the transpose feeding back into the layer below. In async mode the indices are
  kept across half steps while the layer they were computed from is unchanged, so async costs
  no more convolutions per step than sync;
- beta may be a per-example tensor, so the +beta and -beta nudged phases run as one batch;
- every buffer has a fixed address, so a CUDA graph can capture steps and replay them.
"""
from typing import Optional, Sequence

import torch

from eqprop.activations import inplace_activation  # noqa: F401  (the in-place form of an activation)
from eqprop.models.dense_layers import DenseLayers, DenseView
from eqprop.models.step_plan import StepPlan, choose_kernels, choose_layout


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
        self.dense = DenseLayers(plan, syn, [entry[0] for entry in self.fb], static)

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
        self.dense.refresh(self.drive0, self.cur)
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
    def dense_view(self) -> Optional[DenseView]:
        """The tensors a dense net's step reads, or None when some layer is not dense."""
        if not self.plan.all_dense:
            return None
        return DenseView(self.plan, self.batch, self.cur, self.nxt, self.dense.base0, tuple(self.dense.weights),
                         self.nudged, self.neg_beta if self.nudged else None, self.target if self.nudged else None,
                         self.readout, self.model.loss)

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
        dense, kernels = self.dense.fns, self.kernels
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
