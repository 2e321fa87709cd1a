"""The run's pictures: accuracy curves and histograms of neural activity."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def run_title(cfg) -> str:
    """What the run is, in a line: estimator (and beta), task, model, loss."""
    est = cfg.estimator.name + (f" (beta={cfg.estimator.beta:g})" if cfg.estimator.name != "bptt" else "")
    return f"{est}: {cfg.task.name} / {cfg.model.name} / {cfg.loss.name}"


def plot_accuracy(history, path, title: str = ""):
    fig = accuracy_figure(history, title)
    fig.savefig(path)
    plt.close(fig)


def accuracy_figure(history, title: str = ""):
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [100 * h["train_acc"] for h in history], marker="o", markersize=3, label="train")
    ax.plot(epochs, [100 * h["test_acc"] for h in history], marker="o", markersize=3, label="test")
    ax.set_title(f"Accuracy per epoch\n{title}" if title else "Accuracy per epoch", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 2.5 / 7.5 ticks
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_activity(state, path, title: str = ""):
    fig = activity_figure(state, title)
    fig.savefig(path)
    plt.close(fig)


def activity_figure(state, title: str = ""):
    """One histogram per neuron layer of the free-phase states of the last training batch."""
    n = len(state)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.2), squeeze=False)
    for k, (ax, s) in enumerate(zip(axes[0], state)):
        ax.hist(s.detach().float().flatten().cpu().numpy(), bins=50)
        ax.set_title(f"layer {k + 1}" + (" (output)" if k == n - 1 else ""), fontsize=9)
        ax.set_xlabel("neuron state")
        if k == 0:
            ax.set_ylabel("count (neurons x examples)")
    fig.suptitle("Neural activity at the free equilibrium, last batch" + (f"\n{title}" if title else ""),
                 fontsize=10)
    fig.tight_layout()
    return fig
