"""report.png: test accuracy against epoch, one panel per task/model/loss, one curve per row
(estimator and setting), mean over seeds with a ±std band. Each estimator has its own colour family
(BPTT greys, one_sided blues, random_sign greens, symmetric reds); the settings of one estimator are
shades of it, with a line style each, so that no two curves of a panel look alike."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# one colour family per estimator: report.png and the W&B dashboard (eqprop.dashboard) both use it
FAMILIES = {"bptt": "Greys", "one_sided": "Blues", "random_sign": "Greens", "symmetric": "Reds",
            "n_point": "Purples", "holomorphic": "Oranges", "cep": "YlOrBr"}
OTHER_FAMILIES = ("copper", "pink", "bone")            # estimators without a family of their own
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = {"bptt": "s", "one_sided": "o", "random_sign": "^", "symmetric": "D", "n_point": "P",
           "holomorphic": "*", "cep": "X"}


def family_colour(estimator: str) -> str:
    """The estimator's colour where one suffices (the W&B dashboard): the darkest of its family, so BPTT,
    the reference, is black."""
    return matplotlib.colors.to_hex(plt.get_cmap(FAMILIES[estimator])(1.0))


def curve_styles(rows) -> list:
    """(colour, line style, marker) per row: estimator -> colour family, k-th setting of it -> shade k
    (dark to light) and line style k."""
    by_est = {}
    for row in rows:
        by_est.setdefault(row.estimator, []).append(row)
    others = iter(OTHER_FAMILIES * len(by_est))
    styles = {}
    for est, group in by_est.items():
        cmap = plt.get_cmap(FAMILIES.get(est) or next(others))
        for k, row in enumerate(group):
            shade = 0.9 - 0.45 * k / max(len(group) - 1, 1)
            styles[id(row)] = (cmap(shade), LINE_STYLES[k % len(LINE_STYLES)], MARKERS.get(est, "v"))
    return [styles[id(r)] for r in rows]


def plot_report(groups: dict, path) -> None:
    """groups: (task, model, loss) -> [eqprop.report.rows.Row]."""
    panels = [(k, rows) for k, rows in groups.items() if any(r.ok for r in rows)] or list(groups.items())[:1]
    cols = min(3, max(len(panels), 1))
    n_rows = math.ceil(max(len(panels), 1) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(6 * cols, 4.5 * n_rows), squeeze=False)
    for ax, ((task, model, loss), rows) in zip(axes.flat, panels):
        drawn = [r for r in rows if r.ok]
        for row, (colour, style, marker) in zip(drawn, curve_styles(drawn)):
            epochs, mean, std = row.curve()
            m = [100 * v for v in mean]
            ax.plot(epochs, m, color=colour, linestyle=style, marker=marker, markersize=3.5,
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
            ax.legend(fontsize=7, title="estimator (setting), n = seeds", title_fontsize=7)
        else:
            ax.text(0.5, 0.5, "no complete run", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
