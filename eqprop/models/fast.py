"""The fast relaxation step: `EnergyNet.step`'s arithmetic, done in place in preallocated buffers.

`model.step` is the definition (tested against autograd of Phi in float64); `FastStepper` computes
the same thing (tested against `model.step` in tests/test_fast_path.py) and is what `relax` runs
when no autograd graph is wanted. Where the time goes and what it saves:
- two buffers per layer (ping-pong): a step writes the new state over the state before last, so a
  relaxation allocates once instead of every step (what dominates small nets such as the MLP);
- accumulation in place: the feedback GEMM adds onto the drive (`addmm` with `out=`), the
  activation is applied with in-place clamps;
- one forward pass per synapse per step: a synapse's max-pool indices route both the drive of the
  layer above and the transpose feeding back into the layer below. In async mode the indices are
  kept across half steps while the layer they were computed from is unchanged, so async costs
  no more convolutions per step than sync;
- beta may be a per-example tensor, so the +beta and -beta nudged phases run as one batch;
- every buffer has a fixed address, so a CUDA graph can capture steps and replay them.
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from eqprop import activations as A
from eqprop.models.synapses import ConvPool, Dense

# sigma(x) = post(scale * x): the scale folds into the weights of dense layers (scaled copies, see
# FastStepper._dense_plan) or into the last op of a conv layer's pre-activation; post runs in place.
# (1 + hardtanh(x - 1)) / 2 == clamp(x / 2, 0, 1) and sigmoid(4 (x - 0.5)) == sigmoid(4 x - 2), up to
# the rounding of one subtraction. The third entry describes post for the native kernel
# (eqprop/kernels/dense.py): clamp to [a, b], sigmoid(t - a), or tanh.
_SPLIT = {
    A.my_hard_sig: (0.5, lambda t: t.clamp_(0.0, 1.0), ("clamp", 0.0, 1.0)),
    A.hard_sigmoid: (1.0, lambda t: t.clamp_(0.0, 1.0), ("clamp", 0.0, 1.0)),
    A.ctrd_hard_sig: (1.0, lambda t: t.clamp_(-0.5, 0.5), ("clamp", -0.5, 0.5)),
    A.my_sigmoid: (4.0, lambda t: t.sub_(2.0).sigmoid_(), ("sigmoid", 2.0, 0.0)),
    torch.tanh: (1.0, torch.tanh_, ("tanh", 0.0, 0.0)),
}


def split_activation(fn):
    """(scale, post): fn(x) == post(scale * x), post in place (a copy for unknown activations)."""
    entry = _SPLIT.get(fn)
    return entry[:2] if entry is not None else (1.0, lambda t: t.copy_(fn(t)))


def post_form(fn):
    """(kind, a, b): what post of activation `fn` computes ("clamp" to [a, b], "sigmoid" of t - a,
    "tanh"), for kernels that implement it themselves; None for activations not in the table."""
    entry = _SPLIT.get(fn)
    return None if entry is None else entry[2]


def inplace_activation(fn):
    """The in-place form of activation `fn`."""
    scale, post = split_activation(fn)
    return post if scale == 1.0 else (lambda t: post(t.mul_(scale)))


class FastStepper:
    """State buffers and scratch for relaxing `model` on one batch.

    drive0: f_0(x); state: the starting state (copied, never written); beta: a float, or a tensor
    with one value per example; y: the targets when nudged. With `static=True` every input lives in
    a buffer owned by the stepper (refilled by `load`), which is what CUDA graph replay needs.
    memory_format: of the 4-d state buffers; by default that of drive0 (see `choose_layout`).
    """

    def __init__(self, model, drive0, state: Sequence[torch.Tensor], beta=0.0, y=None,
                 static: bool = False, memory_format=None):
        self.model = model
        self.n = n = model.n_layers
        self.static = static
        if memory_format is None:
            memory_format = choose_layout(drive0)
        self.cur = [_buffer(s, memory_format).copy_(s.detach()) for s in state]
        self.nxt = [_buffer(s, memory_format) for s in state]
        self.batch = batch = self.cur[0].shape[0]
        dev, dt = self.cur[0].device, self.cur[0].dtype
        scale, post = split_activation(model.activation)
        self.scale, self.post = [scale] * n, [post] * n
        if model.loss.linear_output:
            self.scale[-1], self.post[-1] = 1.0, None
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
        # Entries: (synapse, ctx, validity key or None when the ctx is static, scratch or None).
        self.fb = []
        for k in range(n - 1):
            s_fb, shared = model.feedback_synapse(k)
            if shared:
                self.fb.append((s_fb, self.fwd_ctx[k + 1], ("f", k + 1) if s_fb.needs_ctx else None, None))
            else:
                idx = torch.empty_like(self.cur[k + 1], dtype=torch.long) if s_fb.needs_ctx else None
                scratch = torch.empty_like(self.cur[k + 1]) if s_fb.needs_ctx else None
                self.fb.append((s_fb, s_fb.static_ctx(self.cur[k].shape, idx),
                                ("b", k) if s_fb.needs_ctx else None, scratch))
        self.track = any(entry[2] is not None for entry in self.fb)
        choose_kernels([(syn[j], self.cur[j - 1].shape) for j in range(1, n)]
                       + [(entry[0], self.cur[k].shape) for k, entry in enumerate(self.fb)], dev,
                       memory_format is torch.channels_last)
        self.readout = syn[n] if model.loss.softmax_readout else None
        self.readout_ctx = self.readout.static_ctx(self.cur[-1].shape) if self.readout is not None else None
        self.valid = set()  # keys of contexts computed from the current value of the layer they read
        self.orders = {}
        self.dense = [self._dense_plan(k) for k in range(n)]
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
        out_dim = (self.model.synapses[-1].out_features if self.readout is not None
                   else self.cur[-1].shape[1])
        target = F.one_hot(y, out_dim).to(self.cur[-1].dtype)
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
    def _dense_plan(self, k):
        """For a 2-d layer k whose synapses are all Dense (the MLP, the CNN's fc layers): the
        parameters its update reads, as [(source tensor, scaled buffer or None)]: forward weight and
        bias of synapse k (k > 0), then the feedback weight (k < n - 1). None for other layers.

        Why: addmm with alpha = beta = scale != 1 runs a separate scaling pass (~1.6x slower on the
        MLP's 128x10 @ 10x512 here). With a power-of-two scale (every split activation's), scaling
        the weights and the input drive once per relaxation gives bitwise the same products."""
        scale, syn, n = self.scale[k], self.syn, self.n
        if self.cur[k].dim() != 2 or math.frexp(scale)[0] != 0.5 or n == 1:
            return None
        if (k > 0 and not isinstance(syn[k], Dense)) or (k + 1 < n and not isinstance(self.fb[k][0], Dense)):
            return None

        def slot(t):
            return (t, None) if t is None or scale == 1.0 else (t, torch.empty_like(t))
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
        self.dense_fn, self.dense_args = [], []
        for k, plan in enumerate(self.dense):
            if plan is None:
                self.dense_fn.append(None)
                self.dense_args.append(None)
                continue
            got = []
            for src, buf in plan:
                if buf is not None:
                    torch.mul(src.detach(), self.scale[k], out=buf)
                got.append(src.detach() if buf is None and src is not None else buf)
            self.dense_args.append(got)  # (W_k, b_k, feedback weight), scaled: the native kernel reads them too
            self.dense_fn.append(self._dense_fn(k, *got))

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
        dense = self.dense_fn
        for k in order:
            out, scale = nxt[k], self.scale[k]
            fn = dense[k]
            if fn is not None:
                fn(cur, out)
                if k == n - 1 and self.nudged:
                    self._nudge(out, cur[k])
            elif k + 1 < n:
                if k > 0:
                    syn[k].drive_into(cur[k - 1], out, self.fwd_idx[k])
                    if track:
                        valid.add(("f", k))
                s_fb, ctx, key, scratch = self.fb[k]
                if key is not None and key not in valid:
                    # Only the indices are wanted; the pooled output lands in scratch, or in the
                    # buffer of layer k + 1, which this call does not update (else it would be valid).
                    s_fb.drive_into(cur[k], nxt[k + 1] if scratch is None else scratch, ctx[1])
                    valid.add(key)
                s_fb.feedback_into(cur[k + 1], ctx, self.drive0 if k == 0 else out, out, scale)
            else:  # the top layer: no feedback, maybe a nudge
                if k > 0:
                    syn[k].drive_into(cur[k - 1], out, self.fwd_idx[k], scale)
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
                syn[j].drive_into(self.cur[j - 1], self.nxt[j], self.fwd_idx[j])
            else:
                s_fb, ctx, _, scratch = self.fb[j]
                s_fb.drive_into(self.cur[j], scratch, ctx[1])
            self.valid.add(key)

    def _nudge(self, out, last):
        """out += scale * -beta * dC/ds_{n-1}, from the current (pre-step) last layer."""
        loss = self.model.loss
        z = self.readout.drive(last)[0] if self.readout is not None else last
        g = torch.sub(z, self.target) if loss.name == "mse" else torch.softmax(z, dim=1).sub_(self.target)
        if self.readout is not None:
            g = self.readout.feedback(g, self.readout_ctx)
        if torch.is_tensor(self.neg_beta):
            out.addcmul_(self.neg_beta, g)
        else:
            out.add_(g, alpha=self.neg_beta)

    def residual(self) -> torch.Tensor:
        """Largest |change| made by the last full step (every layer updated once since), on device.

        sub / in-place abs / amax per layer, combined on device (one host sync for the caller):
        measured ~4x cheaper than torch.dist(..., inf), whose norm kernel is slow on CPU, and the
        check may run every step."""
        out = None
        for c, p in zip(self.cur, self.nxt):
            r = torch.sub(c, p).abs_().amax()
            out = r if out is None else torch.maximum(out, r)
        return out


def choose_layout(drive0):
    """Channels-last state buffers when drive0 is channels-last (the caller converted the model or
    the input, or set Dynamics.channels_last), NCHW otherwise."""
    if drive0.dim() == 4 and not drive0.is_contiguous() and drive0.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.preserve_format


def choose_kernels(pairs, device, channels_last=False):
    """Pick the fast-path kernels of each conv synapse, given (synapse, input shape) pairs.

    Why these (measured with python -m eqprop.bench and the micro-benchmarks in benchmarks/README.md):
    - CPU, NCHW (default): the forward convs are autograd's (oneDNN), so states match the original
      way to the rounding of a few additions. That matters: a max-pool window whose two largest
      inputs are within rounding of each other routes the feedback elsewhere when a conv rounds
      differently, and the paper CNN has many such near-ties. The transposes are oneDNN's
      backward-data kernel, except for convs with at most 4 output positions (the paper CNN's
      4x4 -> 2x2 conv), where one GEMM + fold is several times faster than oneDNN; a transpose only
      feeds the states, not the pooling, so its rounding does not move the routing. The pooling
      goes through a channels-last copy (PyTorch's NCHW max-pool kernel on CPU is slow).
    - CPU, channels-last (opt-in): oneDNN's channels-last convolutions, and GEMMs both ways for the
      tiny maps. Faster; equal to the NCHW path up to near-tie routing (max difference ~1e-3 on the
      paper CNN).
    - GPU: cuDNN's conv and transposed conv in either layout."""
    for syn, in_shape in pairs:
        if not isinstance(syn, ConvPool):
            continue
        syn.pool_via_cl = False
        tiny = math.prod(syn._conv_shape(in_shape)[2:]) <= 4
        if device.type != "cpu":
            syn.fwd_impl, syn.bwd_impl = "conv", "convT"
        elif not channels_last:
            syn.fwd_impl, syn.bwd_impl, syn.pool_via_cl = "conv", "gemm" if tiny else "data", True
        else:
            syn.fwd_impl, syn.bwd_impl = ("gemm", "gemm") if tiny else ("conv", "data")


NARROW = 32  # 2-d layers at most this wide are stored feature-major (see _buffer)


def _buffer(like, fmt):
    """An uninitialised state buffer shaped like `like`. A narrow 2-d layer (an output layer of
    10 units) is stored feature-major, as the transposed view of a (width, batch) tensor: its drive
    W s + b then comes from a GEMM with a long output dimension, which MKL runs ~2x faster than the
    (batch, 10) one. Every consumer takes the (batch, width) view, whatever its strides."""
    if like.dim() == 2 and like.shape[1] <= NARROW:
        return torch.empty(like.shape[1], like.shape[0], device=like.device, dtype=like.dtype).t()
    return torch.empty_like(like, memory_format=_fmt(like, fmt))


def _fmt(t, fmt):
    return fmt if t.dim() == 4 else torch.preserve_format
