"""report.png: test accuracy against epoch, one panel per task/model/loss, one curve per row
(estimator), mean over seeds with a ±std band; BPTT dashed black so the EP variants read against it."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_report(groups: dict, path) -> None:
    """groups: (task, model, loss) -> [report.Row]."""
    panels = [(k, rows) for k, rows in groups.items() if any(r.ok for r in rows)] or list(groups.items())[:1]
    cols = min(3, max(len(panels), 1))
    n_rows = math.ceil(max(len(panels), 1) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(5.5 * cols, 4 * n_rows), squeeze=False)
    for ax, ((task, model, loss), rows) in zip(axes.flat, panels):
        ep_colour = iter(c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"] if c != "#000000")
        for row in rows:
            if not row.ok:
                continue
            epochs, mean, std = row.curve()
            bptt = row.family == "BPTT"
            colour = "black" if bptt else next(ep_colour, None)
            m = [100 * v for v in mean]
            ax.plot(epochs, m, color=colour, linestyle="--" if bptt else "-", marker="o", markersize=3,
                    label=f"{row.label} (n={len(row.ok)})")
            if len(row.ok) > 1:
                ax.fill_between(epochs, [a - 100 * s for a, s in zip(m, std)], [a + 100 * s for a, s in zip(m, std)],
                                color=colour, alpha=0.15, linewidth=0)
        ax.set_title(f"{task} / {model} / {loss}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no complete run", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
