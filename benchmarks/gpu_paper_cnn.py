"""The paper CNN on one GPU: seconds per training step at batch 128, projected seconds per CIFAR-10
epoch (391 steps), peak GPU memory; EP symmetric (T1 250, T2 30, beta 0.5, MSE) and BPTT; the
original-way reference (benchmarks/reference.py) in the same run for the ratio.

    python benchmarks/gpu_paper_cnn.py                       # cuda, batch 128, full T: < 5 min on an H100
    python benchmarks/gpu_paper_cnn.py --device cpu --quick  # smoke test of the script itself

Variants of eqprop's fast path (each in its own try, so one failure does not lose the others):
  fp32        IEEE float32, eager steps
  fp32+graph  IEEE float32, steps replayed from a CUDA graph (checked against the reference)
  tf32+cl+graph  TF32 tensor cores, channels-last weights and states, CUDA graph
The reference runs in IEEE float32, NCHW. The check (max abs difference of states and update
< 1e-4, as in benchmarks/bench.py) applies to the IEEE NCHW variants; the differences of the TF32 /
channels-last variant are printed for information (other rounding moves max-pool near-ties). Training step =
all phases + the parameter gradient (the optimiser's update is not included).
"""
import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.measure import hardware, max_diff, peak_memory, sync  # noqa: E402
from benchmarks.reference import (BETA, Reference, build, eqprop_states, eqprop_step,  # noqa: E402
                                  reference_step, update_error64)
from eqprop.dynamics import Dynamics, set_tf32  # noqa: E402

STEPS_PER_EPOCH = 391  # ceil(50000 / 128)
VARIANTS = {
    "fp32": dict(tf32=False, channels_last=False, graph=False),
    "fp32+graph": dict(tf32=False, channels_last=False, graph=True),
    "tf32+cl+graph": dict(tf32=True, channels_last=True, graph=True),
}


def timed(fn, device, repeat):
    ts = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=None, help="default 128 (quick: 8)")
    ap.add_argument("--T1", type=int, default=None, help="default 250 (quick: 12)")
    ap.add_argument("--T2", type=int, default=None, help="default 30 (quick: 4)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--estimators", default="symmetric,bptt")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="small batch and T (printed): a smoke run")
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="skip remaining measurements once this much wall time is spent")
    ap.add_argument("--out", default="gpu_paper_cnn.json")
    args = ap.parse_args(argv)
    for key, full, quick in (("batch", 128, 8), ("T1", 250, 12), ("T2", 30, 4)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA is not available here; use --device cpu --quick to smoke-test the script")
    t_start = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    meta = dict(torch=torch.__version__, device=str(device), hardware=hardware(device),
                threads=torch.get_num_threads(), date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                batch=args.batch, T1=args.T1, T2=args.T2, beta=BETA, quick=args.quick,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None)
    print(f"paper CNN, batch {args.batch}, T1 {args.T1}, T2 {args.T2}, {meta['hardware']}, torch {meta['torch']}"
          f"{'  [QUICK: batch/T cut]' if args.quick else ''}", flush=True)
    rows = []

    def over_budget():
        return time.perf_counter() - t_start > args.budget_s

    for est in [e.strip() for e in args.estimators.split(",") if e.strip()]:
        cfg = dict(model="cnn", batch=args.batch, T1=args.T1, T2=args.T2, est=est)
        model, x, y = build("cnn", args.batch, device)
        gen = torch.Generator().manual_seed(0)
        set_tf32(False)
        ref = Reference(model)
        try:
            ref_states, ref_grads = reference_step(ref, x, y, cfg)  # warm-up and the check's truth
            ref_s, _ = timed(lambda: reference_step(ref, x, y, cfg), device, args.repeat)
            ref_mem, how = peak_memory(lambda: reference_step(ref, x, y, cfg), device)
            rows.append(dict(estimator=est, variant="reference (autograd of Phi)", s_per_step=ref_s,
                             epoch_s=ref_s * STEPS_PER_EPOCH, peak_bytes=ref_mem, memory_method=how, ratio=1.0))
            print(f"{est} reference: {ref_s:.3f} s/step", flush=True)
        except Exception as e:  # keep measuring eqprop even if the reference does not fit
            traceback.print_exc()
            ref_states, ref_grads, ref_s = None, None, None
            rows.append(dict(estimator=est, variant="reference (autograd of Phi)", error=repr(e)))
        for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
            opt = VARIANTS[name]
            if over_budget():
                rows.append(dict(estimator=est, variant=name, error="skipped: time budget spent"))
                continue
            label = name if device.type == "cuda" or not opt["graph"] else name + " (CPU: no graph, no TF32)"
            try:
                set_tf32(opt["tf32"])
                m, xx = model, x
                if opt["channels_last"]:
                    m, xx, _ = build("cnn", args.batch, device)  # same seed: the same weights and batch
                    m = m.to(memory_format=torch.channels_last)
                    xx = xx.contiguous(memory_format=torch.channels_last)
                dyn = Dynamics(args.T1, args.T2, graph=opt["graph"] and device.type == "cuda",
                               channels_last=opt["channels_last"])
                states, grads, _ = eqprop_states(m, xx, y, cfg, dyn, gen)  # warm-up (and graph capture)
                row = dict(estimator=est, variant=label)
                if ref_states is not None:
                    grads = {p: grads[q] for p, q in zip(model.parameters(), m.parameters())}
                    d_state = max(max_diff(ref_states[k], states[k]) for k in ref_states)
                    d_grad = max_diff([ref_grads[p] for p in model.parameters()], [grads[p] for p in model.parameters()])
                    err64 = update_error64(model, x, y, cfg, ref_states, ref_grads, grads)
                    # as in benchmarks/bench.py: an update gap that is the reference's own float32 rounding is told apart
                    update_ok = d_grad < 1e-4 or (err64 is not None and err64["eqprop"] < 1e-4)
                    row.update(max_state_diff=d_state, max_update_diff=d_grad, update_error_vs_float64=err64,
                               check=("ok" if d_state < 1e-4 and update_ok else "MISMATCH")
                               if not (opt["tf32"] or opt["channels_last"]) else "not held to 1e-4 (TF32 / layout rounding)")
                del states, grads
                s, ts = timed(lambda: eqprop_step(m, xx, y, cfg, dyn, gen), device, args.repeat)
                mem, how = peak_memory(lambda: eqprop_step(m, xx, y, cfg, dyn, gen), device)
                row.update(s_per_step=s, times=ts, epoch_s=s * STEPS_PER_EPOCH, peak_bytes=mem, memory_method=how,
                           ratio=(ref_s / s) if ref_s else None)
                rows.append(row)
                print(f"{est} {name}: {s:.3f} s/step {row.get('check', '')}", flush=True)
            except Exception as e:
                traceback.print_exc()
                rows.append(dict(estimator=est, variant=label, error=repr(e)))
            finally:
                set_tf32(False)
    meta["wall_s"] = time.perf_counter() - t_start
    print(f"\n{meta['hardware']} | torch {meta['torch']} | batch {args.batch}, T1 {args.T1}, T2 {args.T2} | {meta['date']}")
    print("| estimator | variant | s / training step | s / CIFAR-10 epoch (391 steps) | peak memory MB | ratio vs reference | check |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['estimator']} | {r['variant']} | {r['error']} | | | | |")
            continue
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else "-"
        chk = r.get("check", "-") + (f" ({max(r['max_state_diff'], r['max_update_diff']):.0e})" if "max_state_diff" in r else "")
        print(f"| {r['estimator']} | {r['variant']} | {r['s_per_step']:.3f} | {r['epoch_s']:.0f} | "
              f"{r['peak_bytes'] / 2**20:.0f} | {ratio} | {chk} |")
    print(f"wall time {meta['wall_s']:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
