"""The native relaxation of dense nets: FastStepper's step, run by the compiled kernel.

`NativeDense.build(stepper)` returns None when the kernel does not apply (a conv layer, CUDA,
an activation or loss it does not know, non-contiguous weights) or cannot be built; `relax` then
runs the torch path. The kernel reads the stepper's buffers and its scaled weight copies, and
leaves the final state in `stepper.cur` and the state before it in `stepper.nxt`, so
`stepper.residual()` and further torch steps see exactly what torch steps would have left.
"""
import ctypes

import torch

from eqprop.kernels import build
from eqprop.models.fast import post_form

MAXL = 16  # dense_relax.c
POST_NONE = 0
POSTS = {"clamp": 1, "sigmoid": 2, "tanh": 3}  # fast.post_form's kinds -> dense_relax.c's codes
LOSS_MSE, LOSS_SOFTMAX = 0, 1

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


def supported(stepper) -> bool:
    """Whether the kernel computes this stepper's step (independently of the compiler)."""
    cur0 = stepper.cur[0]
    if cur0.device.type != "cpu" or cur0.dtype not in (torch.float32, torch.float64):
        return False
    if stepper.n < 2 or stepper.n > MAXL or any(a is None for a in stepper.dense_args):
        return False
    if post_form(stepper.model.activation) is None:
        return False
    if stepper.base0.dim() != 2 or stepper.base0.dtype != cur0.dtype:
        return False
    tensors = [t for args in stepper.dense_args for t in args if t is not None]
    if stepper.readout is not None:
        tensors += [t for t in (stepper.readout.weight, stepper.readout.bias) if t is not None]
    return all(t.is_contiguous() and t.dtype == cur0.dtype for t in tensors)


class NativeDense:
    def __init__(self, stepper, fn):
        self.stepper, self.fn = stepper, fn
        st, n = stepper, stepper.n
        p = self.plan = Plan()
        p.n, p.batch, p.threads = n, st.batch, torch.get_num_threads()
        self._keep = []  # tensors made here, alive as long as the plan points at them
        kind, lo, hi = post_form(st.model.activation)
        kind = POSTS[kind]
        for k in range(n):
            c = st.cur[k]
            p.width[k] = c.shape[1]
            p.sb[k], p.sj[k] = c.stride()
            w, b, f = st.dense_args[k]
            if k + 1 < n and st.dense[k][2][0] is st.dense[k + 1][0][0] and st.scale[k] == st.scale[k + 1]:
                f = st.dense_args[k + 1][0]  # symmetric net: one copy of W_{k+1} serves both ways (cache)
            p.w[k], p.b[k], p.f[k] = _ptr(w), _ptr(b), _ptr(f)
            if st.post[k] is None:
                p.post[k] = POST_NONE
            else:
                p.post[k], p.lo[k], p.hi[k] = kind, lo, hi
        p.base0 = st.base0.data_ptr()
        p.base_sb, p.base_sj = st.base0.stride()
        p.nudged = int(st.nudged)
        if st.nudged:
            loss = st.model.loss
            p.loss = LOSS_MSE if loss.name == "mse" else LOSS_SOFTMAX
            neg = st.neg_beta
            neg = (neg.reshape(-1).expand(st.batch) if torch.is_tensor(neg)
                   else torch.tensor(neg, dtype=st.cur[0].dtype).expand(st.batch)).contiguous()
            target = st.target.contiguous()
            self._keep += [neg, target]
            p.neg_beta, p.target = neg.data_ptr(), target.data_ptr()
            p.out_dim = target.shape[1]
            if st.readout is not None:
                p.rw, p.rb = _ptr(st.readout.weight.detach()), _ptr(st.readout.bias)

    @classmethod
    def build(cls, stepper):
        if not supported(stepper):
            return None
        lib = build.load()
        if lib is None:
            return None
        name = "eqprop_dense_relax_f32" if stepper.cur[0].dtype == torch.float32 else "eqprop_dense_relax_f64"
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_double, [ctypes.POINTER(Plan)]
        return cls(stepper, fn)

    def run(self, steps: int, update: str) -> float:
        """`steps` steps (sync, or async: even layers then odd layers); the largest |change| of the
        last one, like stepper.residual()."""
        st, p = self.stepper, self.plan
        for k in range(st.n):  # the ping-pong buffers may have swapped since the plan was made
            p.cur[k], p.nxt[k] = st.cur[k].data_ptr(), st.nxt[k].data_ptr()
        p.steps, p.async_ = steps, int(update == "async")
        r = self.fn(ctypes.byref(p))
        if r < 0:
            raise MemoryError("the native dense kernel could not allocate its scratch")
        return r
