"""The GDU check's figures: per-step traces of a few entries (gdu.png) and the symmetric-vs-one-sided
bars (bars.png)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

# line style of each EP estimate in gdu.png; BPTT is solid
STYLES = {"one_sided(+beta)": ":", "one_sided(-beta)": "-.", "symmetric": "--"}


def entries_with_signal(trace: torch.Tensor, n: int) -> torch.Tensor:
    """Flat indices of the n entries with the largest |gradient| (the trace summed over time);
    ties go to the lower index, so the choice depends on nothing but the traces."""
    g = trace.flatten(1).double().sum(0).abs()
    order = torch.sort(g, descending=True, stable=True).indices
    return order[: min(n, g.numel())]


def plot_gdu(bptt: dict, ep: dict, path, n_lines: int = 3, title: str = "GDU check"):
    """One panel per parameter tensor / neuron layer: BPTT (solid) and every EP estimate in `ep`
    ({name: traces}, styles in STYLES) for the entries with the largest |BPTT gradient|."""
    keys = list(bptt)
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        b = bptt[key].flatten(1).double().cpu()
        t = range(1, b.shape[0] + 1)
        for j, i in enumerate(entries_with_signal(bptt[key].cpu(), n_lines)):
            color = f"C{j}"
            ax.plot(t, b[:, i].numpy(), color=color, linestyle="-", lw=1.5)
            for name, traces in ep.items():
                e = traces[key].flatten(1).double().cpu()
                ax.plot(t, e[:, i].numpy(), color=color, linestyle=STYLES.get(name, "--"), lw=1.5)
        ax.set_title(f"{key} {tuple(bptt[key].shape[1:])}", fontsize=9)
        ax.set_xlabel("nudged-phase step t")
        ax.set_ylabel("update at step t")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        handles = [Line2D([], [], color="gray", linestyle="-", label="BPTT")]
        handles += [Line2D([], [], color="gray", linestyle=STYLES.get(n, "--"), label=f"EP {n}") for n in ep]
        ax.legend(handles=handles, fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{title}: per-step updates of the {n_lines} entries with the largest |BPTT gradient| "
                 "per panel (one colour each)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_bars(ratios: dict, path, title: str = "GDU check"):
    """bars.png: per weight tensor, distance of symmetric EP to BPTT over the mean distance of the
    two one-sided estimates (gdu.bars)."""
    keys = list(ratios)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(keys) + 2), 4.2))
    ax.bar(range(len(keys)), [ratios[k] for k in keys], color="C0")
    ax.axhline(1.0, color="gray", lw=0.8, linestyle="--")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0.0, max(1.05, max(ratios.values(), default=0.0) * 1.05))
    ax.set_ylabel("|symmetric - BPTT| / mean |one-sided - BPTT|")
    ax.set_title(f"{title}\n1: symmetric EP as close to BPTT as one-sided EP; 0.5: twice as close",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
