"""The GDU study: how far EP's step-by-step updates sit from BPTT's gradients as beta shrinks,
for the one-sided, random-sign and symmetric estimates, in one job.

`mode=gducheck gdu.betas=[...]` runs it in place of the single check (no gdu.json / gdu.png), for the
estimators in gdu.estimators (null: ESTIMATORS; n_point and holomorphic with estimator.points), and writes:
  gdu_study.json   every (estimator, points, beta): rel_error, the relative distance of the total
                   update (the traces summed over time) from the BPTT gradient over all parameters;
                   errors averaged over parameters and neuron layers, the error of each parameter
                   tensor / neuron layer, and the local order
  gdu_study.md     the same as tables, with the fitted order of each estimate
  gdu_study.png    rel_error, error and sign error against beta (log-log), fitted orders in the legend

The paper's finding should read off at a glance: the one-sided bias is O(beta) (order 1), the
symmetric one O(beta^2) (order 2). A random sign draws the sign of beta once per estimate, so a
single estimate is as far from BPTT as a one-sided one (order 1); it is only unbiased on average.
"""
import json
import logging
import math
from pathlib import Path

import torch

from eqprop.estimators import WITH_POINTS, build_estimator
from eqprop.gdu import bptt_traces, compare
from eqprop.runs import write_text_atomic

log = logging.getLogger(__name__)

ESTIMATORS = ("one_sided", "random_sign", "symmetric")
EXPECTED_ORDER = {"one_sided": 1, "random_sign": 1, "symmetric": 2, "cep": 1}  # cep: its traces are one-sided EP's


def expected_order(est: str, points) -> object:
    """The bias order the theory gives: points for the stencils (holomorphic: N, in the limit), else the table."""
    return points if est in WITH_POINTS else EXPECTED_ORDER.get(est)


def rel_error(bptt: dict, ep: dict, keys) -> float:
    """||total EP update - BPTT gradient|| / ||BPTT gradient|| over the parameters `keys`, the totals
    being the traces summed over the T2 steps."""
    b = torch.cat([bptt[k].double().sum(0).flatten() for k in keys])
    e = torch.cat([ep[k].double().sum(0).flatten() for k in keys])
    return ((e - b).norm() / b.norm()).item()


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _order(e0, e1, b0, b1):
    """Local slope of log(error) against log(beta) between two betas."""
    if e0 <= 0 or e1 <= 0 or b0 == b1:
        return None
    return math.log(e1 / e0) / math.log(b1 / b0)


def _fit_order(betas, errors):
    """Least-squares slope of log(error) against log(beta)."""
    pts = [(math.log(b), math.log(e)) for b, e in zip(betas, errors) if e > 0]
    if len(pts) < 2:
        return None
    mx = _mean(p[0] for p in pts)
    my = _mean(p[1] for p in pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else None


def gdu_study(model, x, y, T1: int, T2: int, betas, estimators=ESTIMATORS, generator=None,
              points=None) -> dict:
    """The GDU check over `betas` for each estimator. BPTT's traces do not depend on beta, so they
    are computed once and every EP estimate is compared with the same ground truth."""
    betas = sorted(float(b) for b in betas)
    names = [name for name, _ in model.named_parameters()]
    # The softmax read-out sits outside the energy, so the averages (the energy's parameters) leave it
    # out; it is still in per_key. (BPTT puts its whole gradient on the last free step; EP's traces,
    # whose first step starts from beta 0, put dC/dtheta at one nudged step there and its changes after.)
    readout = f"synapses.{model.n_layers}." if model.loss.softmax_readout else None
    readout_keys = [k for k in names if readout and k.startswith(readout)]
    param_keys = [k for k in names if k not in readout_keys]
    bptt, free = bptt_traces(model, x, y, T1, T2)
    neuron_keys = [k for k in bptt if k not in names]
    rows = []
    for est in estimators:
        prev = None
        for beta in betas:
            estimate = build_estimator(est, beta, points)
            ep, drawn = estimate.traces(model, x, y, free, T2, generator)
            sign = 1.0 if drawn[0].real > 0 else -1.0  # the sign of the (first) phase's beta: random_sign's draw
            per_key = compare(bptt, ep)
            row = {
                "estimator": est, "points": getattr(estimate, "points", None), "beta": beta, "sign": sign,
                "rel_error": rel_error(bptt, ep, names),
                "rmse_params": _mean(per_key[k]["rmse"] for k in param_keys),
                "sign_error_params": _mean(per_key[k]["sign_error"] for k in param_keys),
                "rmse_neurons": _mean(per_key[k]["rmse"] for k in neuron_keys),
                "sign_error_neurons": _mean(per_key[k]["sign_error"] for k in neuron_keys),
                "per_key": per_key,
            }
            row["order"] = None if prev is None else _order(prev["rmse_params"], row["rmse_params"],
                                                            prev["beta"], beta)
            rows.append(row)
            prev = row
    fitted = {est: _fit_order(betas, [r["rmse_params"] for r in rows if r["estimator"] == est])
              for est in estimators}
    fitted_rel = {est: _fit_order(betas, [r["rel_error"] for r in rows if r["estimator"] == est])
                  for est in estimators}
    points_of = {r["estimator"]: r["points"] for r in rows}
    return {"T1": T1, "T2": T2, "n_examples": int(x.shape[0]), "dtype": str(x.dtype).replace("torch.", ""),
            "betas": betas, "estimators": list(estimators), "param_keys": param_keys,
            "neuron_keys": neuron_keys, "readout_keys": readout_keys, "fitted_order": fitted,
            "fitted_order_rel_error": fitted_rel,
            "expected_order": {est: expected_order(est, points_of[est]) for est in estimators}, "rows": rows}


def label(est: str, points) -> str:
    return f"{est}({points})" if points is not None else est


def _fmt(v, digits=4):
    if v is None:
        return "—"
    return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"


def to_markdown(study: dict, title: str = "GDU study") -> str:
    s = study
    lines = [
        f"# {title}: EP updates against BPTT gradients, as beta shrinks", "",
        f"T1 {s['T1']}, T2 {s['T2']}, {s['n_examples']} examples, {s['dtype']}. "
        "RMSE: the RMS over the T2 steps of (EP - BPTT), divided per element by the larger of the RMS of EP "
        "and of BPTT, averaged over elements and then over the parameter tensors (or the neuron layers). "
        "Sign error: the fraction of EP/BPTT sign disagreements. Order: the slope of log RMSE against "
        "log beta from the previous beta (1: error halves when beta halves; 2: it quarters).", "",
        "Neurons: with s = sigma(dPhi/ds), EP's state change per step carries the activation's slope "
        "sigma'(u), BPTT's dL/ds does not, so their error levels off at a floor set by the activation "
        "(dividing EP's neuron updates by sigma' brings it down to the parameters' level). The parameter "
        "updates are what the theorem and training use."
        + (f" The softmax read-out ({', '.join(s['readout_keys'])}) is outside the energy and out of the "
           "averages." if s["readout_keys"] else ""), "",
        "rel_error: ||total EP update - BPTT gradient|| / ||BPTT gradient|| over all parameters (the "
        "traces summed over the T2 steps).", "",
        "| estimate | beta | RMSE params | sign error params | RMSE neurons | sign error neurons | order | rel_error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        name = label(r["estimator"], r.get("points")) + (
            f" ({'+' if r['sign'] > 0 else '-'})" if r["estimator"] == "random_sign" else "")
        lines.append(f"| {name} | {r['beta']:g} | {_fmt(r['rmse_params'])} | {_fmt(r['sign_error_params'])} | "
                     f"{_fmt(r['rmse_neurons'])} | {_fmt(r['sign_error_neurons'])} | {_fmt(r['order'], 2)} | {_fmt(r['rel_error'])} |")
    lines += ["", "Fitted order over all betas (parameters): "
              + ", ".join(f"{e} {_fmt(o, 2)} (expected {s['expected_order'].get(e, '?')})"
                          for e, o in s["fitted_order"].items()) + ".", "",
              "Fitted order of rel_error: " + ", ".join(f"{e} {_fmt(o, 2)}" for e, o in
                                                        s["fitted_order_rel_error"].items()) + ".", ""]
    keys = s["param_keys"] + s["readout_keys"] + s["neuron_keys"]
    lines += ["## RMSE per parameter tensor and neuron layer", "",
              "| estimate | beta | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for r in s["rows"]:
        lines.append(f"| {r['estimator']} | {r['beta']:g} | "
                     + " | ".join(_fmt(r["per_key"][k]["rmse"]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def plot_study(study: dict, path, title: str = "GDU study"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_e, ax_s) = plt.subplots(1, 3, figsize=(16, 4.2))
    betas = study["betas"]
    for i, est in enumerate(study["estimators"]):
        rows = [r for r in study["rows"] if r["estimator"] == est]
        b = [r["beta"] for r in rows]
        name = label(est, rows[0].get("points"))
        order = study["fitted_order"].get(est)
        style = "s--" if est == "random_sign" else "o-"  # it lies on one_sided's line where the sign is +
        ax_e.loglog(b, [r["rmse_params"] for r in rows], style, color=f"C{i}",
                    label=f"{name} (order {order:.2f})" if order is not None else name)
        rel_order = study["fitted_order_rel_error"].get(est)
        ax_r.loglog(b, [r["rel_error"] for r in rows], style, color=f"C{i}",
                    label=f"{name} (order {rel_order:.2f})" if rel_order is not None else name)
        for k in study["param_keys"]:  # one thin line per parameter tensor
            if k.endswith("weight"):
                ax_e.loglog(b, [r["per_key"][k]["rmse"] for r in rows], "-", color=f"C{i}", alpha=0.25, lw=0.8)
        ax_s.semilogx(b, [r["sign_error_params"] for r in rows], style, color=f"C{i}", label=est)
    # guides: slope 1 (O(beta)) through the one-sided error at the largest beta, slope 2 (O(beta^2))
    # through the symmetric one, so a departure from the expected order shows as a diverging line
    at_top = {r["estimator"]: r["rmse_params"] for r in study["rows"] if r["beta"] == betas[-1]}
    for p, est, style in ((1, "one_sided", ":"), (2, "symmetric", "-.")):
        top = at_top.get(est, 0.0)
        if len(betas) > 1 and top > 0:
            ax_e.loglog(betas, [top * (bb / betas[-1]) ** p for bb in betas], style, color="gray",
                        label=f"slope {p}")
    from matplotlib.ticker import NullFormatter

    for ax in (ax_r, ax_e, ax_s):
        ax.set_xticks(betas)
        ax.set_xticklabels([f"{b:g}" for b in betas])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax_r.set_xlabel("beta")
    ax_r.set_ylabel("rel_error: |total update - BPTT| / |BPTT|")
    ax_r.set_title("the training update, all parameters", fontsize=9)
    ax_r.grid(alpha=0.3, which="both")
    ax_r.legend(fontsize=7)
    ax_e.set_xlabel("beta")
    ax_e.set_ylabel("relative RMSE, EP vs BPTT (parameters)")
    ax_e.set_title("mean over parameter tensors; thin: each weight", fontsize=9)
    ax_e.grid(alpha=0.3, which="both")
    ax_e.legend(fontsize=7)
    ax_s.set_xlabel("beta")
    ax_s.set_ylabel("sign error (parameters)")
    ax_s.grid(alpha=0.3, which="both")
    ax_s.legend(fontsize=7)
    fig.suptitle(f"{title}: T1 {study['T1']}, T2 {study['T2']}, {study['n_examples']} examples")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_study(study: dict, out_dir, title: str = "GDU study") -> None:
    out_dir = Path(out_dir)
    for name, text in (("gdu_study.json", json.dumps(study, indent=2)), ("gdu_study.md", to_markdown(study, title))):
        write_text_atomic(out_dir / name, text)
    plot_study(study, out_dir / "gdu_study.png", title)


def run_from_config(cfg, model, x, y, out_dir, generator, logger=None) -> dict:
    """mode=gducheck with gdu.betas: the study on the examples the single check would use."""
    estimators = tuple(cfg.gdu.estimators) if cfg.gdu.estimators else ESTIMATORS
    study = gdu_study(model, x, y, cfg.dynamics.T1, cfg.dynamics.T2, cfg.gdu.betas, estimators, generator,
                      points=cfg.estimator.points)
    m = cfg.model
    shape = m.archi if m.dense else f"channels {m.channels}, fc {m.fc}"
    title = f"GDU study ({m.name} {shape}, {cfg.loss.name}, task {cfg.task.name})"
    write_study(study, out_dir, title)
    if logger is not None:
        summary = {}
        for r in study["rows"]:
            where = f"gdu_study/{r['estimator']}/beta={r['beta']:g}"
            summary.update({f"{where}/rmse_params": r["rmse_params"], f"{where}/rel_error": r["rel_error"]})
        logger.log_summary(summary)
    log.info("%s", to_markdown(study, title).split("\n## ")[0])
    return study
