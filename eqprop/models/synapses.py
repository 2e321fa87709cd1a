"""Synapses: the bilinear couplings <s_{k+1}, f(s_k)> that make up Phi, with closed-form transposes.

Each synapse knows two things:
- `drive(s)`: f(s), the pre-activation it sends forward, plus a context (pool indices, shapes)
  that the transpose needs;
- `feedback(g, ctx)`: the vector-Jacobian product d<g, f(s)>/ds, i.e. what the layer above sends back.
Both are plain tensor ops, so the same code runs under no_grad (EP relaxation) and with autograd (BPTT).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

POOLS = ("m", "a", "i")


class Dense(nn.Linear):
    """Fully connected synapse; flattens its input (so it can follow a conv layer)."""

    def drive(self, s, ctx_only: bool = False):
        if ctx_only:
            return None, s.shape
        return F.linear(s.flatten(1), self.weight, self.bias), s.shape

    def feedback(self, g, ctx):
        return (g @ self.weight).view(ctx)


class ConvPool(nn.Conv2d):
    """Conv2d followed by a 2x2/stride-2 pool: 'm' max, 'a' average, 'i' none."""

    def __init__(self, c_in, c_out, kernel, stride, padding, pool: str, bias: bool = True):
        super().__init__(c_in, c_out, kernel, stride=stride, padding=padding, bias=bias)
        if pool not in POOLS:
            raise ValueError(f"pool {pool!r} must be one of {POOLS}")
        self.pool = pool

    def output_size(self, size: int) -> int:
        size = (size + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        return size // 2 if self.pool != "i" else size

    def drive(self, s, ctx_only: bool = False):
        if ctx_only and self.pool != "m":
            # Only max-pool needs the conv output to route the transpose; spare the conv otherwise.
            return None, (s.shape, None, self._conv_shape(s.shape))
        h = F.conv2d(s, self.weight, self.bias, self.stride, self.padding)
        if self.pool == "m":
            out, idx = F.max_pool2d(h, 2, 2, return_indices=True)
        elif self.pool == "a":
            out, idx = F.avg_pool2d(h, 2, 2), None
        else:
            out, idx = h, None
        return out, (s.shape, idx, h.shape)

    def _conv_shape(self, in_shape):
        n, _, hh, ww = in_shape
        k, st, p = self.kernel_size[0], self.stride[0], self.padding[0]
        return (n, self.out_channels, (hh + 2 * p - k) // st + 1, (ww + 2 * p - k) // st + 1)

    def feedback(self, g, ctx):
        in_shape, idx, h_shape = ctx
        if self.pool == "m":
            g = F.max_unpool2d(g, idx, 2, 2, output_size=h_shape[-2:])
        elif self.pool == "a":
            g = g.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) * 0.25
            g = F.pad(g, (0, h_shape[3] - g.shape[3], 0, h_shape[2] - g.shape[2]))
        k, st, p = self.kernel_size[0], self.stride[0], self.padding[0]
        out_pad = [in_shape[d] - ((h_shape[d] - 1) * st - 2 * p + k) for d in (2, 3)]
        return F.conv_transpose2d(g, self.weight, None, st, p, out_pad)
