"""How many steps do synchronous and asynchronous updates need to reach the equilibrium that the
paper's synchronous T1 = 250 reaches? Paper CNN (128-256-512-512, my_hard_sig), random batch.

    python benchmarks/convergence.py                     # batch 16, T1 250, T2 30 (CPU: ~10 min)
    python benchmarks/convergence.py --quick             # batch 4, T1 120, T2 20 (said in the output)
    python benchmarks/convergence.py --scales 1,2 --batch 16 --threads 2 --out convergence.json

The yardstick is the fixed-point residual r(s) = max |step_sync(s) - s|, the largest change one
more synchronous step would make: it is zero exactly at an equilibrium and does not depend on the
update scheme that produced s. For each weight scale (1: random init; 2: every parameter x2, which
makes the dynamics stiffer, like a trained net) the script runs
- the free phase from zero for T1 steps, synchronous and asynchronous, and
- the +beta nudged phase (beta 0.5, MSE) for T2 steps from the free state synchronous T1 reached,
records r after every step, and reports from which step on each scheme stays at or under the
residual the synchronous run ends at (its target), and under 1e-4, plus seconds per step.
`tol` in `relax` sees a scheme's own step size max |s_t - s_{t-1}|, reported in the JSON as well.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.measure import hardware  # noqa: E402
from benchmarks.reference import model_cfg  # noqa: E402
from eqprop.losses import build_loss  # noqa: E402
from eqprop.models import build_model  # noqa: E402
from eqprop.models.fast import FastStepper  # noqa: E402


@torch.no_grad()
def fixed_point_residual(model, drive0, state, beta, y):
    new = model.step(drive0, state, beta, y)
    return max((a - b).abs().max().item() for a, b in zip(new, state))


@torch.no_grad()
def trace(model, drive0, start, T, update, beta=0.0, y=None):
    """Residual after each step, the scheme's own step sizes, seconds per step, final state."""
    st = FastStepper(model, drive0, start, beta, y)
    parities = ([list(range(0, model.n_layers, 2)), list(range(1, model.n_layers, 2))]
                if update == "async" else [None])
    res, own, spent = [], [], 0.0
    for _ in range(T):
        t0 = time.perf_counter()
        for layers in parities:
            st.step(layers)
        spent += time.perf_counter() - t0
        own.append(st.residual().item())
        res.append(fixed_point_residual(model, drive0, st.state, beta, y))
    return res, own, spent / T, [s.clone() for s in st.state]


def settled(res, target):
    """First step from which the residual stays <= target to the end (the residual of a scheme that
    oscillates can dip under the target early and climb back)."""
    t = None
    for i in range(len(res) - 1, -1, -1):
        if res[i] > target:
            break
        t = i + 1
    return t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=None, help="default 16 (quick: 4)")
    ap.add_argument("--T1", type=int, default=None, help="default 250 (quick: 120)")
    ap.add_argument("--T2", type=int, default=None, help="default 30 (quick: 20)")
    ap.add_argument("--scales", default="1,2", help="weight scales to try, comma-separated")
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="batch 4, T1 120, T2 20 unless given")
    ap.add_argument("--out", default="", help="write the traces as JSON")
    args = ap.parse_args(argv)
    for key, full, quick in (("batch", 16, 4), ("T1", 250, 120), ("T2", 30, 20)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"paper CNN, batch {args.batch}, T1 {args.T1}, T2 {args.T2}, beta {args.beta}, {device} "
          f"({hardware(device)}), {torch.get_num_threads()} threads, torch {torch.__version__}"
          f"{'  [QUICK: batch/T cut]' if args.quick else ''}", flush=True)
    rows, traces = [], {}
    for scale in [float(s) for s in args.scales.split(",")]:
        torch.manual_seed(args.seed)
        cfg, c, size = model_cfg("cnn")
        cfg.scale = scale if scale != 1.0 else None
        model = build_model(cfg, build_loss("mse", False), c, size).to(device)
        g = torch.Generator().manual_seed(args.seed + 1)
        x = torch.rand((args.batch, c, size, size), generator=g).to(device)
        y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
        with torch.no_grad():
            drive0 = model.input_drive(x)
        zero = model.init_state(args.batch, device=device)
        free = {}
        for update in ("sync", "async"):
            free[update] = trace(model, drive0, zero, args.T1, update)
            print(f"  scale {scale:g} free {update}: r(T1) = {free[update][0][-1]:.3g}", flush=True)
        start = free["sync"][3]
        nudged = {u: trace(model, drive0, start, args.T2, u, args.beta, y) for u in ("sync", "async")}
        for phase, T, runs in (("free", args.T1, free), ("nudged", args.T2, nudged)):
            target = runs["sync"][0][-1]
            for update in ("sync", "async"):
                res, own, sps, _ = runs[update]
                rows.append(dict(scale=scale, phase=phase, T=T, update=update, target=target,
                                 steps_to_target=settled(res, target),
                                 steps_to_1e4=settled(res, 1e-4), final=res[-1], s_per_step=sps))
                traces[f"scale{scale:g}/{phase}/{update}"] = {"fixed_point_residual": res, "step_size": own}
    head = "| weights | phase | T | update | target r (sync at T) | steps to stay <= target | steps to stay <= 1e-4 | r at T | s/step |"
    print(head)
    print("|---" * 9 + "|")
    for r in rows:
        w = "random init" if r["scale"] == 1.0 else f"init x{r['scale']:g}"
        fmt = lambda v: str(v) if v is not None else f"> {r['T']}"  # noqa: E731
        print(f"| {w} | {r['phase']} | {r['T']} | {r['update']} | {r['target']:.2e} | {fmt(r['steps_to_target'])} "
              f"| {fmt(r['steps_to_1e4'])} | {r['final']:.2e} | {r['s_per_step']:.3f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "traces": traces}, f)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
