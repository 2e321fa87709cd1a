"""Synapses: the bilinear couplings <s_{k+1}, f(s_k)> that make up Phi, with closed-form transposes.

Each synapse knows two things:
- `drive(s)`: f(s), the pre-activation it sends forward, plus a context (pool indices, shapes)
  that the transpose needs;
- `feedback(g, ctx)`: the vector-Jacobian product d<g, f(s)>/ds, i.e. what the layer above sends back.
Both are plain tensor ops, so the same code runs under no_grad (EP relaxation) and with autograd (BPTT).

The fast relaxation path (eqprop.models.fast) uses three more, checked against the two above:
- `drive_into(s, out, idx, scale, kernels)`: f(s) written into a preallocated buffer (max-pool
  indices into `idx`);
- `feedback_into(g, ctx, base, out, scale, kernels)`: out = base + feedback(g, ctx), in place;
- `param_grads(s, g, ctx)`: d<g, f(s)>/d(weight, bias) in closed form, for the EP update.
`kernels` (a `ConvKernels`, from the fast path's plan) picks how a conv synapse computes them; a
synapse holds no fast-path state of its own.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from eqprop.models.dropout import MaskedInput

POOLS = ("m", "a", "i")


def conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Height (= width) of a conv's output on a size x size input."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_pool_size(size: int, kernel: int, stride: int, padding: int, pool: str) -> int:
    """Height (= width) of a ConvPool's output: its conv, then its 2x2/stride-2 pool unless pool is 'i'."""
    size = conv_size(size, kernel, stride, padding)
    return size // 2 if pool != "i" else size


@dataclass(frozen=True)
class ConvKernels:
    """The kernels of ConvPool's fast-path methods (chosen by eqprop.models.fast.choose_kernels).

    fwd: "conv" (oneDNN/cuDNN) or "gemm" (unfold + one GEMM); bwd: "convT" (conv_transpose2d),
    "data" (the conv's backward-data kernel) or "gemm" (one GEMM + fold); pool_via_cl: max-pool an
    NCHW conv output through a channels-last copy (PyTorch's NCHW max-pool kernel on CPU is slow;
    values and indices are identical). The defaults are the definitional ops of `drive`/`feedback`."""
    fwd: str = "conv"
    bwd: str = "convT"
    pool_via_cl: bool = False


DEFINITIONAL = ConvKernels()


class Dense(MaskedInput, nn.Linear):
    """Fully connected synapse; flattens its input (so it can follow a conv layer)."""

    def drive(self, s, ctx_only: bool = False):
        if ctx_only:
            return None, s.shape
        return F.linear(self.masked(s).flatten(1), self.weight, self.bias), s.shape

    def feedback(self, g, ctx):
        return self.masked((g @ self.weight).view(ctx))

    needs_ctx = False  # the transpose needs only shapes, never a forward pass

    def static_ctx(self, in_shape, idx=None):
        return torch.Size(in_shape)

    def drive_into(self, s, out, idx=None, scale=1.0, kernels=None):
        """out = scale * f(s); `out` may be a feature-major (transposed) buffer. (`kernels`: conv only.)"""
        if s.dim() != 2:
            s = s.flatten(1)
        if out.stride(0) == 1 and out.shape[1] > 1:
            # out^T = W s^T + b: the GEMM's long dimension is the batch
            if self.bias is None:
                torch.mm(self.weight, s.t(), out=out.t())
                if scale != 1.0:
                    out.mul_(scale)
            else:
                torch.addmm(self.bias.unsqueeze(1), self.weight, s.t(), beta=scale, alpha=scale, out=out.t())
            return
        if self.bias is None:
            torch.mm(s, self.weight.t(), out=out)
            if scale != 1.0:
                out.mul_(scale)
        else:
            torch.addmm(self.bias, s, self.weight.t(), beta=scale, alpha=scale, out=out)

    def feedback_into(self, g, ctx, base, out, scale=1.0, kernels=None):
        """out = scale * (base + feedback(g)): one GEMM accumulating onto base, no temporary."""
        if out.dim() == 2 and out.is_contiguous():
            torch.addmm(base, g, self.weight, beta=scale, alpha=scale, out=out)
        elif out.is_contiguous() and base.is_contiguous():
            torch.addmm(base.view(base.shape[0], -1), g, self.weight, beta=scale, alpha=scale,
                        out=out.view(out.shape[0], -1))
        else:
            torch.add(base, (g @ self.weight).view(out.shape), out=out)
            if scale != 1.0:
                out.mul_(scale)

    def param_grads(self, s, g, ctx=None):
        dw = g.t() @ self.masked(s).flatten(1)
        return (dw,) if self.bias is None else (dw, g.sum(0))


def _avg_pool(h):
    """2x2 average pooling; of complex h (holomorphic EP), of its real and imaginary parts (it is linear)."""
    if h.is_complex():
        return torch.complex(F.avg_pool2d(h.real, 2, 2), F.avg_pool2d(h.imag, 2, 2))
    return F.avg_pool2d(h, 2, 2)


class ConvPool(MaskedInput, nn.Conv2d):
    """Conv2d followed by a 2x2/stride-2 pool: 'm' max, 'a' average, 'i' none."""

    def __init__(self, c_in, c_out, kernel, stride, padding, pool: str, bias: bool = True):
        super().__init__(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias)
        if pool not in POOLS:
            raise ValueError(f"pool {pool!r} must be one of {POOLS}")
        self.pool = pool

    def output_size(self, size: int) -> int:
        return conv_pool_size(size, self.kernel_size[0], self.stride[0], self.padding[0], self.pool)

    def drive(self, s, ctx_only: bool = False):
        if ctx_only and self.pool != "m":
            # Only max-pool needs the conv output to route the transpose; spare the conv otherwise.
            return None, (s.shape, None, self._conv_shape(s.shape))
        h = F.conv2d(self.masked(s), self.weight, self.bias, self.stride, self.padding)
        if self.pool == "m":
            out, idx = F.max_pool2d(h, 2, 2, return_indices=True)
        elif self.pool == "a":
            out, idx = _avg_pool(h), None
        else:
            out, idx = h, None
        return out, (s.shape, idx, h.shape)

    def _conv_shape(self, in_shape):
        n, _, hh, ww = in_shape
        k, st, p = self.kernel_size[0], self.stride[0], self.padding[0]
        return (n, self.out_channels, conv_size(hh, k, st, p), conv_size(ww, k, st, p))

    def _unpool(self, g, ctx):
        """Transpose of the pool: routes g back onto the conv output grid."""
        _, idx, h_shape = ctx
        if self.pool == "m":
            return F.max_unpool2d(g, idx, 2, 2, output_size=h_shape[-2:])
        if self.pool == "a":
            g = g.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) * 0.25
            return F.pad(g, (0, h_shape[3] - g.shape[3], 0, h_shape[2] - g.shape[2]))
        return g

    def feedback(self, g, ctx):
        return self.masked(self.feedback_from_unpooled(self._unpool(g, ctx), ctx))

    @property
    def needs_ctx(self) -> bool:
        """Only max-pool needs a forward pass to know where its transpose routes."""
        return self.pool == "m"

    def static_ctx(self, in_shape, idx=None):
        """The context `drive` would return, with the max-pool indices living in buffer `idx`."""
        return (torch.Size(in_shape), idx, self._conv_shape(in_shape))

    def _conv_fast(self, s, fwd):
        if fwd == "conv":
            return F.conv2d(s, self.weight, self.bias, self.stride, self.padding)
        n, (ho, wo) = s.shape[0], self._conv_shape(s.shape)[2:]
        cols = F.unfold(s, self.kernel_size, padding=self.padding, stride=self.stride)  # n, cin*k*k, L
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)                           # cin*k*k, n*L
        w = self.weight.reshape(self.out_channels, -1)
        h = torch.mm(w, cols) if self.bias is None else torch.addmm(self.bias.unsqueeze(1), w, cols)
        return h.view(self.out_channels, n, ho, wo).transpose(0, 1)

    def _transpose_fast(self, gu, ctx, like, bwd):
        """feedback's transposed conv of the unpooled gu; `like` has the input's shape and layout."""
        in_shape = ctx[0]
        if bwd == "data":
            return torch.ops.aten.convolution_backward(
                gu, like, self.weight, None, self.stride, self.padding, self.dilation, False, [0, 0], 1,
                [True, False, False])[0]
        if bwd == "gemm":
            n, c = gu.shape[:2]
            g = gu.transpose(0, 1).reshape(c, -1)                                   # cout, n*L
            cols = torch.mm(self.weight.reshape(c, -1).t(), g)                       # cin*k*k, n*L
            cols = cols.view(cols.shape[0], n, -1).transpose(0, 1)
            return F.fold(cols, in_shape[-2:], self.kernel_size, padding=self.padding, stride=self.stride)
        return self.feedback_from_unpooled(gu, ctx)

    def feedback_from_unpooled(self, gu, ctx):
        in_shape, _, h_shape = ctx
        k, st, p = self.kernel_size[0], self.stride[0], self.padding[0]
        out_pad = [in_shape[d] - ((h_shape[d] - 1) * st - 2 * p + k) for d in (2, 3)]
        return F.conv_transpose2d(gu, self.weight, None, st, p, out_pad)

    def drive_into(self, s, out, idx=None, scale=1.0, kernels=DEFINITIONAL):
        """out = scale * f(s), max-pool indices into idx."""
        h = self._conv_fast(s, kernels.fwd)
        if self.pool == "m":
            if kernels.pool_via_cl and not h.is_contiguous(memory_format=torch.channels_last):
                h = h.contiguous(memory_format=torch.channels_last)
            torch.ops.aten.max_pool2d_with_indices.out(h, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                       out=out, indices=idx)
        elif self.pool == "a":
            torch.ops.aten.avg_pool2d.out(h, [2, 2], [2, 2], out=out)
        else:
            out.copy_(h)
        if scale != 1.0:
            out.mul_(scale)

    def feedback_into(self, g, ctx, base, out, scale=1.0, kernels=DEFINITIONAL):
        """out = scale * (base + feedback(g))."""
        fb = self._transpose_fast(self._unpool(g, ctx), ctx, out, kernels.bwd)
        torch.add(base, fb, out=out)
        if scale != 1.0:
            out.mul_(scale)

    def param_grads(self, s, g, ctx):
        gu = self._unpool(g, ctx)
        if gu.is_complex():  # holomorphic EP: the real kernel on the parts of the complex bilinear form
            real = [self.param_grads(a, b, ctx) for a, b in
                    ((s.real, g.real), (s.imag, g.imag), (s.real, g.imag), (s.imag, g.real))]
            return tuple(torch.complex(rr - ii, ri + ir) for rr, ii, ri, ir in zip(*real))
        mask = [False, True, self.bias is not None]
        _, dw, db = torch.ops.aten.convolution_backward(
            gu, self.masked(s), self.weight.real, [self.out_channels] if self.bias is not None else None,
            self.stride, self.padding, self.dilation, False, [0, 0], 1, mask)
        return (dw,) if self.bias is None else (dw, db)
