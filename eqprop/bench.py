"""Benchmark: eqprop's fast path against the original way of running EP, side by side.

    python -m eqprop.bench                      # all configurations, full T1/T2 (CNN: minutes)
    python -m eqprop.bench --quick              # cut T1/T2 (printed), a smoke run
    python -m eqprop.bench --configs mlp,mlp_bptt --threads 2 --out bench.json

In one process, each configuration builds one network, one set of weights and one batch, and runs
a training step (all phases and the parameter gradient; the optimiser's update is left out) two
ways:
- eqprop: the estimators as the app runs them (fast relaxation, closed-form EP update);
- reference: `Reference` below, the original implementation's way: neurons are leaf tensors that
  require grad, every step is `torch.autograd.grad(Phi.sum(), neurons)` followed by the activation,
  the EP update is autograd of Phi at the equilibria, and BPTT differentiates through that same
  autograd-of-Phi dynamics (create_graph=True over the last T2 steps).
It first checks that both reach the same states and the same parameter update (max abs difference
< 1e-4 in float32; for EP, an update gap that is the reference's own float32 rounding is told
apart, see `update_error64`), then times them alternately (median seconds per training step) and measures
peak memory in a separate run: CUDA max_memory_allocated, or on CPU the growth of the process's
peak resident set (VmHWM, reset through /proc/self/clear_refs; ru_maxrss growth where that is not
allowed, which only sees new peaks).
"""
import argparse
import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from eqprop.estimators import BPTT, Dynamics, Symmetric, build_estimator
from eqprop.losses import build_loss
from eqprop.models import build_model
from eqprop.models.synapses import ConvPool

TOL = 1e-4

# name -> network, batch, T1, T2, estimator; the paper CNN is 128-256-512-512 on 3x32x32
CONFIGS = {
    "mlp": dict(model="mlp", batch=128, T1=30, T2=10, est="symmetric"),
    "mlp_bptt": dict(model="mlp", batch=128, T1=30, T2=10, est="bptt"),
    "cnn": dict(model="cnn", batch=32, T1=250, T2=30, est="symmetric"),
    "cnn_bptt": dict(model="cnn", batch=32, T1=250, T2=30, est="bptt"),
}
QUICK_T = {"mlp": (30, 10), "cnn": (20, 5)}
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

    def cost(self, s, y):
        m = self.m
        out = self._forward(m.synapses[-1], s[-1]) if m.loss.softmax_readout else s[-1]
        if m.loss.name == "mse":
            return 0.5 * (out - F.one_hot(y, out.shape[1]).to(out.dtype)).pow(2).sum(1)
        return F.cross_entropy(out, y, reduction="none")

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


# ----- measuring ----------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory(fn, device):
    """(bytes, method): peak memory added while fn() runs."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base, "cuda max_memory_allocated"
    try:  # hand freed heap back to the OS so the earlier runs' peaks do not hide this one's
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - base) * 1024, "peak RSS growth (VmHWM)"
    except (OSError, KeyError):
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, "ru_maxrss growth"


def runnable_others():
    """Processes other than this one ready to run right now (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1]) - 1
    except OSError:
        return None
    return None


def wait_quiet(seconds, max_wait, log):
    """On a shared machine, wait until nothing else has been runnable for `seconds` (sampled 5x a
    second), at most `max_wait` seconds; returns the seconds waited (None: gave up)."""
    if seconds <= 0 or runnable_others() is None:
        return 0.0
    t0 = time.perf_counter()
    calm_since = t0
    while time.perf_counter() - calm_since < seconds:
        if runnable_others() > 0:
            calm_since = time.perf_counter()
        if time.perf_counter() - t0 > max_wait:
            log(f"  (machine still busy after {max_wait:.0f} s: measuring anyway)")
            return None
        time.sleep(0.2)
    return time.perf_counter() - t0


def max_diff(a, b):
    return max((u.detach() - v.detach()).abs().max().item() for u, v in zip(a, b))


def hardware(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} ({len(names)} logical CPUs)" if names else platform.processor()
    except OSError:
        return platform.processor() or platform.machine()


def native_status(wanted: bool) -> str:
    """What relaxes the dense nets: recorded with the numbers."""
    if not wanted:
        return "off (torch ops)"
    from eqprop.kernels import build
    lib = build.load()
    return f"compiled: {lib._name}" if lib is not None else f"unavailable, torch ops: {build.error()}"


def run_config(name, cfg, device, repeat, dyn_kw, log, quiet=(0.0, 0.0)):
    model, x, y = build(cfg["model"], cfg["batch"], device)
    ref = Reference(model)
    dyn = Dynamics(cfg["T1"], cfg["T2"], **dyn_kw)
    gen = torch.Generator().manual_seed(0)

    # 1. the check (also the warm-up of both paths)
    ref_states, ref_grads = reference_step(ref, x, y, cfg)
    fast_states, fast_grads, steps = eqprop_states(model, x, y, cfg, dyn, gen)
    d_state = max(max_diff(ref_states[k], fast_states[k]) for k in ref_states)
    d_grad = max_diff([ref_grads[p] for p in model.parameters()], [fast_grads[p] for p in model.parameters()])
    err64 = update_error64(model, x, y, cfg, ref_states, ref_grads, fast_grads)
    # the update agrees if the two agree, or if eqprop's is within TOL of the exact update at the
    # reference's own equilibria (then the gap is the reference's float32 rounding)
    update_ok = d_grad < TOL or (err64 is not None and err64["eqprop"] < TOL)
    ok = d_state < TOL and update_ok
    log(f"  check: max|state diff| {d_state:.2e}, max|update diff| {d_grad:.2e} -> {'ok' if ok else 'MISMATCH'}"
        f"; eqprop's steps {steps}")
    if err64:
        log(f"  update against the exact (float64) update at the reference's equilibria: reference "
            f"{err64['reference']:.2e}, eqprop {err64['eqprop']:.2e}")
    del ref_states, ref_grads, fast_states, fast_grads

    # 2. memory, one run each
    ref_mem, how = peak_memory(lambda: reference_step(ref, x, y, cfg), device)
    fast_mem, _ = peak_memory(lambda: eqprop_step(model, x, y, cfg, dyn, gen), device)

    # 3. time, alternating so that background load hits both alike
    times = {"reference": [], "eqprop": []}
    runs = {"reference": lambda: reference_step(ref, x, y, cfg),
            "eqprop": lambda: eqprop_step(model, x, y, cfg, dyn, gen)}
    busy = 0
    for i in range(repeat):
        if wait_quiet(quiet[0], quiet[1], log) is None:
            busy += 1
        for key in (("reference", "eqprop") if i % 2 == 0 else ("eqprop", "reference")):
            sync(device)
            t0 = time.perf_counter()
            runs[key]()
            sync(device)
            times[key].append(time.perf_counter() - t0)
        log(f"  rep {i + 1}/{repeat}: reference {times['reference'][-1]:.4f} s, eqprop {times['eqprop'][-1]:.4f} s")
    ref_s, fast_s = statistics.median(times["reference"]), statistics.median(times["eqprop"])
    return {
        "config": name, "model": cfg["model"], "estimator": cfg["est"], "batch": cfg["batch"],
        "T1": cfg["T1"], "T2": cfg["T2"], "beta": BETA if cfg["est"] != "bptt" else None,
        "reference_s": ref_s, "eqprop_s": fast_s, "ratio": ref_s / fast_s,
        "reference_img_s": cfg["batch"] / ref_s, "eqprop_img_s": cfg["batch"] / fast_s,
        "reference_peak_bytes": ref_mem, "eqprop_peak_bytes": fast_mem, "memory_method": how,
        "max_state_diff": d_state, "max_update_diff": d_grad, "check_ok": ok, "update_error_vs_float64": err64,
        "eqprop_steps": steps, "times_reference": times["reference"], "times_eqprop": times["eqprop"],
        "reps_on_busy_machine": busy if quiet[0] > 0 else None,
    }


def table(rows):
    head = ("config", "batch", "T1/T2", "reference s/step", "eqprop s/step", "ratio",
            "ref img/s", "eqprop img/s", "ref peak MB", "eqprop peak MB", "max |d state|", "max |d update|", "check")
    lines = [head]
    notes = False
    for r in rows:
        upd = f"{r['max_update_diff']:.0e}"
        e = r.get("update_error_vs_float64")
        if e and r["max_update_diff"] >= TOL:
            upd += f" (vs exact: ref {e['reference']:.0e}, eqprop {e['eqprop']:.0e})"
            notes = True
        lines.append((r["config"], str(r["batch"]), f"{r['T1']}/{r['T2']}", f"{r['reference_s']:.4f}",
                      f"{r['eqprop_s']:.4f}", f"{r['ratio']:.1f}x", f"{r['reference_img_s']:.1f}",
                      f"{r['eqprop_img_s']:.1f}", f"{r['reference_peak_bytes'] / 2**20:.0f}",
                      f"{r['eqprop_peak_bytes'] / 2**20:.0f}", f"{r['max_state_diff']:.0e}", upd,
                      "ok" if r["check_ok"] else "MISMATCH"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if notes:
        out.append("vs exact: each update against the float64 evaluation of autograd of Phi at the reference's "
                   "equilibria; the reference's float32 update loses digits to cancellation (bench.update_error64).")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m eqprop.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {list(CONFIGS)}")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help=f"cut T1/T2 to {QUICK_T} and the repeats")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs of each path (default 5 MLP, 3 CNN; 2 quick)")
    ap.add_argument("--update", default="sync", choices=["sync", "async"],
                    help="eqprop's update scheme (async does not compute the same states: the check will say so)")
    ap.add_argument("--tol", type=float, default=0.0,
                    help="eqprop stops a phase once max |ds| < tol (dynamics.tol; T stays the cap). The reference "
                         "always runs all T steps: the check says whether the states still agree")
    ap.add_argument("--check-every", type=int, default=None, help="steps between tol checks (default: auto)")
    ap.add_argument("--batch-nudged", default="on", choices=["on", "off"],
                    help="eqprop runs the +beta/-beta phases as one batch (default on)")
    ap.add_argument("--graph", action="store_true", help="CUDA graphs for eqprop's relaxation (CUDA only)")
    ap.add_argument("--channels-last", action="store_true",
                    help="eqprop's conv states channels-last (faster on CPU; rounds differently, see README)")
    ap.add_argument("--native", default="on", choices=["on", "off"],
                    help="eqprop relaxes dense nets on CPU with its compiled kernel (default on; off: torch ops)")
    ap.add_argument("--out", default="bench.json", help="JSON results file ('' to skip)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each timed pair, wait until no other process has been runnable for S seconds "
                         "(shared machines; Linux)")
    ap.add_argument("--max-wait", type=float, default=600.0, help="give up waiting for quiet after this many seconds")
    args = ap.parse_args(argv)

    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    dyn_kw = {"update": args.update, "graph": args.graph, "channels_last": args.channels_last,
              "batch_nudged": args.batch_nudged == "on", "native": args.native == "on", "tol": args.tol,
              "check_every": args.check_every}

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    meta = {
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
        "hardware": hardware(device), "threads": torch.get_num_threads(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick, "dtype": "float32", "update": args.update, "batch_nudged": args.batch_nudged,
        "native": args.native, "native_kernel": native_status(args.native == "on"), "tol": args.tol,
        "check_every": args.check_every,
        "graph": args.graph, "channels_last": args.channels_last, "command": "python -m eqprop.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    log(f"eqprop.bench: torch {meta['torch']}, {meta['device']} ({meta['hardware']}), "
        f"{meta['threads']} threads, {meta['date']}; native dense kernel: {meta['native_kernel']}")
    if args.quick:
        log(f"QUICK MODE: T1/T2 cut to {QUICK_T}; not the paper's settings")
    rows = []
    for name in names:
        cfg = dict(CONFIGS[name])
        if args.quick:
            cfg["T1"], cfg["T2"] = QUICK_T[cfg["model"]]
        repeat = args.repeat or (2 if args.quick else 5 if cfg["model"] == "mlp" else 3)
        log(f"{name}: {cfg['model']} batch {cfg['batch']}, T1 {cfg['T1']}, T2 {cfg['T2']}, {cfg['est']}, {repeat} timed runs")
        rows.append(run_config(name, cfg, device, repeat, dyn_kw, log, (args.wait_quiet, args.max_wait)))
    meta["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {meta['torch']} | {meta['device']}: {meta['hardware']} | {meta['threads']} threads | "
          f"{meta['date']}{' | QUICK (T1/T2 cut)' if args.quick else ''}"
          f"{f' | eqprop tol {args.tol} (phases stop early; reference runs all T)' if args.tol > 0 else ''}")
    print(table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"wrote {args.out}")
    return 0 if all(r["check_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
