"""Dropout for energy-based nets: eqprop's own reconstruction of the paper's dropout runs (the
original's dropout script, main_dropout.py, was never published).

Synapse k reads its input through a mask m_k (Bernoulli(keep_k) / keep_k, one per example), so
Phi = sum_k <s_k, f_k(m_k * s_{k-1})> - beta C: the masked net is still an energy-based net, the
dynamics and the EP update stay exact for it, and BPTT differentiates the same dynamics. The masks
are drawn once per training step and held fixed through all its phases; evaluation runs without.
"""
from contextlib import contextmanager

import torch


class MaskedInput:
    """Mixin for synapses: an optional per-example input mask (a plain attribute, never saved)."""

    mask = None

    def masked(self, s):
        if self.mask is None:
            return s
        return s * self._tiled(s)

    def _tiled(self, s):
        m = self.mask
        if m.shape[0] != s.shape[0]:  # phases stacked along the batch (e.g. +beta and -beta)
            m = m.repeat((s.shape[0] // m.shape[0],) + (1,) * (m.dim() - 1))
        return m.view(s.shape) if m.shape != s.shape else m


def has_masks(model) -> bool:
    return any(getattr(s, "mask", None) is not None for s in model.synapses)


@contextmanager
def dropout_masks(model, keep_probs, batch: int):
    """Draw one mask per example for each synapse whose keep probability is < 1 (from the global
    torch RNG, which the engine seeds per epoch and checkpoints), for the duration of the block."""
    p = next(model.parameters())
    ins = [model.in_shape] + list(model.state_shapes)
    try:
        for syn, keep, shape in zip(model.synapses, keep_probs, ins):
            if keep < 1.0:
                bern = torch.rand((batch,) + tuple(shape)) < keep
                syn.mask = bern.to(device=p.device, dtype=p.dtype) / keep
        # a vector-field net's backward twin of synapse k + 1 reads the same layer: same mask
        for k, B in enumerate(getattr(model, "backward_synapses", [])):
            B.mask = model.synapses[k + 1].mask
        yield
    finally:
        for syn in list(model.synapses) + list(getattr(model, "backward_synapses", [])):
            syn.mask = None
