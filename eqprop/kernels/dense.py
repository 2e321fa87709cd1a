"""The native relaxation of dense nets: FastStepper's step, run by the compiled kernel.

`NativeDense.build(stepper)` returns None when the kernel does not apply (a conv layer, CUDA,
an activation or loss form it does not know, non-contiguous weights) or cannot be built; `relax`
then runs the torch path. The kernel reads what the stepper's `dense_view()` exposes (its buffers,
its scaled weight copies, its plan), and leaves the final state in `stepper.cur` and the state
before it in `stepper.nxt`, so `stepper.residual()` and further torch steps see exactly what torch
steps would have left.
"""
import ctypes

import torch

from eqprop.kernels import build

MAXL = 16  # dense_relax.c
POST_NONE = 0
POSTS = {"clamp": 1, "sigmoid": 2, "tanh": 3}  # activations.Post kinds -> dense_relax.c's codes
LINKS = {"identity": 0, "softmax": 1}  # losses.Loss.link -> dense_relax.c's LOSS_MSE, LOSS_SOFTMAX

I64s, Ptrs, F64s = ctypes.c_int64 * MAXL, ctypes.c_void_p * MAXL, ctypes.c_double * MAXL


class Plan(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in
                ("n", "batch", "steps", "async_", "threads", "nudged", "loss", "out_dim")] + [
        ("width", I64s), ("cur", Ptrs), ("nxt", Ptrs), ("sb", I64s), ("sj", I64s),
        ("base0", ctypes.c_void_p), ("base_sb", ctypes.c_int64), ("base_sj", ctypes.c_int64),
        ("w", Ptrs), ("b", Ptrs), ("f", Ptrs), ("post", I64s), ("lo", F64s), ("hi", F64s),
        ("neg_beta", ctypes.c_void_p), ("target", ctypes.c_void_p), ("rw", ctypes.c_void_p),
        ("rb", ctypes.c_void_p)]


def _ptr(t):
    return None if t is None else t.data_ptr()


def _known_forms(view) -> bool:
    layers = view.plan.layers
    if any(a is not None and (a.post is None or a.post.kind not in POSTS)
           for a in (layer.activation for layer in layers)):
        return False
    return not view.nudged or view.loss.link in LINKS


def supported(view) -> bool:
    """Whether the kernel computes the step of this `FastStepper.dense_view()` (independently of the
    compiler)."""
    if view is None:
        return False
    cur0 = view.cur[0]
    if cur0.device.type != "cpu" or cur0.dtype not in (torch.float32, torch.float64):
        return False
    if len(view.cur) < 2 or len(view.cur) > MAXL or not _known_forms(view):
        return False
    if view.base0.dim() != 2 or view.base0.dtype != cur0.dtype:
        return False
    tensors = [t for args in view.weights for t in args if t is not None]
    if view.readout is not None:
        tensors += [t for t in (view.readout.weight, view.readout.bias) if t is not None]
    return all(t.is_contiguous() and t.dtype == cur0.dtype for t in tensors)


class NativeDense:
    def __init__(self, view, fn):
        self.view, self.fn = view, fn
        n = len(view.cur)
        p = self.c_plan = Plan()
        p.n, p.batch, p.threads = n, view.batch, torch.get_num_threads()
        self._keep = []  # tensors made here, alive as long as the plan points at them
        for k, layer in enumerate(view.plan.layers):
            c = view.cur[k]
            p.width[k] = c.shape[1]
            p.sb[k], p.sj[k] = c.stride()
            # a symmetric net's feedback weight is the forward copy of the layer above (one copy, cache)
            w, b, f = view.weights[k]
            p.w[k], p.b[k], p.f[k] = _ptr(w), _ptr(b), _ptr(f)
            post = None if layer.activation is None else layer.activation.post
            if post is None:
                p.post[k] = POST_NONE
            else:
                p.post[k], p.lo[k], p.hi[k] = POSTS[post.kind], post.a, post.b
        p.base0 = view.base0.data_ptr()
        p.base_sb, p.base_sj = view.base0.stride()
        p.nudged = int(view.nudged)
        if view.nudged:
            p.loss = LINKS[view.loss.link]
            neg = view.neg_beta
            neg = (neg.reshape(-1).expand(view.batch) if torch.is_tensor(neg)
                   else torch.tensor(neg, dtype=view.cur[0].dtype).expand(view.batch)).contiguous()
            target = view.target.contiguous()
            self._keep += [neg, target]
            p.neg_beta, p.target = neg.data_ptr(), target.data_ptr()
            p.out_dim = target.shape[1]
            if view.readout is not None:
                p.rw, p.rb = _ptr(view.readout.weight.detach()), _ptr(view.readout.bias)

    @classmethod
    def build(cls, stepper):
        view = stepper.dense_view()
        if not supported(view):
            return None
        lib = build.load()
        if lib is None:
            return None
        name = "eqprop_dense_relax_f32" if view.cur[0].dtype == torch.float32 else "eqprop_dense_relax_f64"
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_double, [ctypes.POINTER(Plan)]
        return cls(view, fn)

    def run(self, steps: int, update: str) -> float:
        """`steps` steps (sync, or async: even layers then odd layers); the largest |change| of the
        last one, like stepper.residual()."""
        view, p = self.view, self.c_plan
        for k, (c, nx) in enumerate(zip(view.cur, view.nxt)):  # the ping-pong buffers may have swapped
            p.cur[k], p.nxt[k] = c.data_ptr(), nx.data_ptr()
        p.steps, p.async_ = steps, int(update == "async")
        r = self.fn(ctypes.byref(p))
        if r < 0:
            raise MemoryError("the native dense kernel could not allocate its scratch")
        return r
