"""The GDU check ("gradient descending updates"): step-by-step EP updates of the nudged phase
against BPTT gradients through the last T2 steps of the free phase, per parameter and neuron layer.

Semantics follow the paper's check: BPTT[key][t] is the gradient contribution of the t-th step
counted back from the end of the free phase (and, for neurons, -batch * dL/ds at that step);
EP[key][t] is the update made by the t-th nudged step, (s_{t+1} - s_t) / beta for neurons and
-(dPhi(s_{t+1})/dtheta - dPhi(s_t)/dtheta) / beta for parameters. The theorem says they match.
"""
import torch

from eqprop.dynamics import relax


def _param_grads(model, loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach().clone() for p, g in zip(params, grads)]


def bptt_traces(model, x, y, T1: int, T2: int):
    names, params = zip(*model.named_parameters())
    n = x.shape[0]
    with torch.no_grad():
        ref = relax(model, x, model.init_state(n, device=x.device, dtype=x.dtype), T1 - T2).state
    partial, neurons = [], []
    for K in range(T2 + 1):
        with torch.no_grad():
            start = relax(model, x, list(ref), K).state if K else list(ref)
        leaves = [s.detach().requires_grad_(True) for s in start]
        with torch.enable_grad():
            end = relax(model, x, leaves, T2 - K).state
            loss = model.loss.cost(model.output(end), y).mean()
            if K != T2:
                partial.append(_param_grads(model, loss, params))
            if K != 0:
                g = torch.autograd.grad(loss, leaves, allow_unused=True)
                neurons.append([torch.zeros_like(s) if gi is None else -n * gi for s, gi in zip(leaves, g)])
    # partial[K] sums the contributions of steps K..T2-1: difference them into single steps
    steps = [[a - b for a, b in zip(partial[K], partial[K + 1])] for K in range(T2 - 1)] + [partial[-1]]
    steps.reverse()
    neurons.reverse()
    out = {name: torch.stack([s[i] for s in steps]) for i, name in enumerate(names)}
    for k in range(model.n_layers):
        out[f"neurons_{k}"] = torch.stack([s[k].detach() for s in neurons])
    free = [s.detach() for s in end]
    return out, free


def ep_traces(model, x, y, free, T2: int, beta: float, estimator: str = "one_sided", generator=None):
    """Per-step EP updates from the free state. symmetric: the half difference of the +beta and
    -beta trajectories; random_sign: one-sided with a random sign of beta."""
    names, params = zip(*model.named_parameters())
    if estimator == "random_sign":
        sign = 1.0 if torch.randint(0, 2, (1,), generator=generator).item() else -1.0
        beta = sign * beta

    def trajectory(b):
        p_steps, n_steps, s = [], [], list(free)
        drive0 = model.input_drive(x)
        for _ in range(T2):
            with torch.no_grad():
                nxt = model.step(drive0, s, b, y)
            with torch.enable_grad():
                delta = model.phi(x, nxt, b, y).mean() - model.phi(x, s, b, y).mean()
                g = torch.autograd.grad(-delta / b, params, allow_unused=True)
            p_steps.append([torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g)])
            n_steps.append([(a - c) / b for a, c in zip(nxt, s)])
            s = nxt
        return p_steps, n_steps

    p_steps, n_steps = trajectory(beta)
    if estimator == "symmetric":
        p_neg, n_neg = trajectory(-beta)
        p_steps = [[(a + c) / 2 for a, c in zip(u, v)] for u, v in zip(p_steps, p_neg)]
        n_steps = [[(a + c) / 2 for a, c in zip(u, v)] for u, v in zip(n_steps, n_neg)]
    out = {name: torch.stack([s[i] for s in p_steps]) for i, name in enumerate(names)}
    for k in range(model.n_layers):
        out[f"neurons_{k}"] = torch.stack([s[k] for s in n_steps])
    return out


def compare(bptt: dict, ep: dict) -> dict:
    """Per key: relative RMSE over time (normalised per element by the larger of the two RMS,
    then averaged over elements) and the fraction of sign disagreements."""
    out = {}
    for key in bptt:
        b, e = bptt[key].double(), ep[key].double()
        f_g = (e - b).pow(2).mean(dim=0).sqrt()
        rel = f_g / (1e-10 + torch.maximum(e.pow(2).mean(dim=0).sqrt(), b.pow(2).mean(dim=0).sqrt()))
        out[key] = {"rmse": rel.mean().item(), "sign_error": (e * b < 0).double().mean().item()}
    return out


def gdu_check(model, x, y, T1: int, T2: int, beta: float, estimator: str = "one_sided", generator=None):
    """Returns (bptt traces, ep traces, metrics per key)."""
    bptt, free = bptt_traces(model, x, y, T1, T2)
    ep = ep_traces(model, x, y, free, T2, beta, estimator, generator)
    return bptt, ep, compare(bptt, ep)


def plot_gdu(bptt: dict, ep: dict, path, n_lines: int = 5):
    """EP dashed, BPTT solid, a few coordinates per key, one panel per parameter / neuron layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(bptt)
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        b = bptt[key].flatten(1).cpu()
        e = ep[key].flatten(1).cpu()
        idx = torch.linspace(0, b.shape[1] - 1, min(n_lines, b.shape[1])).long()
        t = range(1, b.shape[0] + 1)
        for j, i in enumerate(idx):
            color = f"C{j}"
            ax.plot(t, b[:, i].numpy(), color=color, linestyle="-")
            ax.plot(t, e[:, i].numpy(), color=color, linestyle="--")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("t")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("GDU check: EP (dashed) vs BPTT (solid)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
