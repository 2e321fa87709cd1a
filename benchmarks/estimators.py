"""Time per training step of each estimator against symmetric EP, on one network and batch.

The network is the benchmark's MLP (784-512-10, batch 128, T1 30, T2 10) with tanh, an analytic
activation, so that every estimator (holomorphic EP included) can run it. A step is what
`engine.train` calls per batch: all phases and the parameter update estimate; CEP's step also holds
its T2 optimiser steps (plain SGD at lr 0, so the weights stay put across repeats).
"""
import statistics
import time
from types import SimpleNamespace

import torch

from benchmarks.measure import sync
from eqprop.dynamics import Dynamics
from eqprop.estimators import build_estimator
from eqprop.losses import build_loss
from eqprop.models import build_model

BETA = 0.5
POINTS = 4
SHAPE = dict(archi=[784, 512, 10], batch=128, T1=30, T2=10)


def estimator_rows(names, device, repeat: int, dyn_kw: dict, log, T=None) -> list:
    """[{estimator, points, s_step, vs_symmetric}] with symmetric first; T=(T1, T2) overrides the shape's."""
    torch.manual_seed(0)
    cfg = SimpleNamespace(name="mlp", archi=SHAPE["archi"], activation="tanh", scale=None, same_update=False)
    model = build_model(cfg, build_loss("mse", False), 1, 28).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand((SHAPE["batch"],) + model.in_shape, generator=g).to(device)
    y = torch.randint(0, 10, (SHAPE["batch"],), generator=g).to(device)
    T1, T2 = T or (SHAPE["T1"], SHAPE["T2"])
    dyn = Dynamics(T1, T2, **dyn_kw)
    rows = []
    for name in ["symmetric"] + [n for n in names if n != "symmetric"]:
        est = build_estimator(name, BETA, POINTS)
        if hasattr(est, "bind_optimizer"):
            est.bind_optimizer(torch.optim.SGD(model.parameters(), lr=0.0))
        gen = torch.Generator().manual_seed(0)
        est(model, x, y, dyn, gen)  # warm-up
        times = []
        for _ in range(repeat):
            sync(device)
            t0 = time.perf_counter()
            est(model, x, y, dyn, gen)
            sync(device)
            times.append(time.perf_counter() - t0)
        s = statistics.median(times)
        rows.append({"estimator": name, "points": getattr(est, "points", None), "s_step": s,
                     "vs_symmetric": s / rows[0]["s_step"] if rows else 1.0, "times": times})
        log(f"estimator {name}: {s:.4f} s/step")
    return rows


def estimator_table(rows) -> str:
    lines = ["| estimator | s/step | vs symmetric |", "|---|---:|---:|"]
    for r in rows:
        name = r["estimator"] + (f"({r['points']})" if r["points"] is not None else "")
        lines.append(f"| {name} | {r['s_step']:.4f} | {r['vs_symmetric']:.2f}x |")
    return "\n".join(lines)
