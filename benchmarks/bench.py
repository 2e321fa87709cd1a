"""Benchmark: eqprop's fast path against the original way of running EP, side by side.

    python benchmarks/bench.py                  # all configurations, full T1/T2 (CNN: minutes)
    python benchmarks/bench.py --quick          # cut T1/T2 (printed), a smoke run
    python benchmarks/bench.py --configs mlp,mlp_bptt --threads 2 --out bench.json
    python benchmarks/bench.py --configs '' --estimators n_point,holomorphic,cep   # s/step vs symmetric

In one process, each configuration builds one network, one set of weights and one batch, and runs
a training step (all phases and the parameter gradient; the optimiser's update is left out) two
ways:
- eqprop: the estimators as the app runs them (fast relaxation, closed-form EP update);
- reference: `Reference` (benchmarks/reference.py), the original implementation's way: every
  step is `torch.autograd.grad(Phi.sum(), neurons)` followed by the activation, the EP update is
  autograd of Phi at the equilibria, BPTT differentiates through that same dynamics.
It first checks that both reach the same states and the same parameter update (max abs difference
< 1e-4 in float32; for EP, an update gap that is the reference's own float32 rounding is told
apart, see `reference.update_error64`), then times them alternately (median seconds per training step) and measures
peak memory in a separate run: CUDA max_memory_allocated, or on CPU the growth of the process's
peak resident set (VmHWM, reset through /proc/self/clear_refs; ru_maxrss growth where that is not
allowed, which only sees new peaks).
"""
import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.measure import hardware, max_diff, native_status, peak_memory, sync, wait_quiet  # noqa: E402
from benchmarks.reference import (BETA, Reference, build, eqprop_states, eqprop_step,  # noqa: E402
                                  reference_step, update_error64)
from benchmarks.estimators import estimator_rows, estimator_table  # noqa: E402
from eqprop.dynamics import Dynamics  # noqa: E402

TOL = 1e-4

# name -> network, batch, T1, T2, estimator; the paper CNN is 128-256-512-512 on 3x32x32
CONFIGS = {
    "mlp": dict(model="mlp", batch=128, T1=30, T2=10, est="symmetric"),
    "mlp_bptt": dict(model="mlp", batch=128, T1=30, T2=10, est="bptt"),
    "cnn": dict(model="cnn", batch=32, T1=250, T2=30, est="symmetric"),
    "cnn_bptt": dict(model="cnn", batch=32, T1=250, T2=30, est="bptt"),
}
QUICK_T = {"mlp": (30, 10), "cnn": (20, 5)}


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
                   "equilibria; the reference's float32 update loses digits to cancellation (reference.update_error64).")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0])
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
    ap.add_argument("--estimators", default="", help="comma-separated estimators to time per training step "
                    "against symmetric EP (benchmarks/estimators.py), e.g. n_point,holomorphic,cep")
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
    from eqprop.estimators import ESTIMATORS

    bad = [e for e in args.estimators.split(",") if e.strip() and e.strip() not in ESTIMATORS or e.strip() == "bptt"]
    if bad:
        ap.error(f"--estimators {bad}: choose EP estimators from {sorted(set(ESTIMATORS) - {'bptt'})}")
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
        "graph": args.graph, "channels_last": args.channels_last, "command": "python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    log(f"benchmarks/bench.py: torch {meta['torch']}, {meta['device']} ({meta['hardware']}), "
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
    est_names = [e.strip() for e in args.estimators.split(",") if e.strip()]
    est_rows = []
    if est_names:
        repeat = args.repeat or (2 if args.quick else 5)
        est_rows = estimator_rows(est_names, device, repeat, dyn_kw, log, QUICK_T["mlp"] if args.quick else None)
    meta["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {meta['torch']} | {meta['device']}: {meta['hardware']} | {meta['threads']} threads | "
          f"{meta['date']}{' | QUICK (T1/T2 cut)' if args.quick else ''}"
          f"{f' | eqprop tol {args.tol} (phases stop early; reference runs all T)' if args.tol > 0 else ''}")
    if rows:
        print(table(rows))
    if est_rows:
        print(estimator_table(est_rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows, "estimators": est_rows}, f, indent=2)
        print(f"wrote {args.out}")
    return 0 if all(r["check_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
