"""The run's pictures: accuracy curves and histograms of neural activity."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy(history, path):
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [100 * h["train_acc"] for h in history], label="train")
    ax.plot(epochs, [100 * h["test_acc"] for h in history], label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_activity(state, path):
    n = len(state)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3), squeeze=False)
    for k, (ax, s) in enumerate(zip(axes[0], state)):
        ax.hist(s.detach().float().flatten().cpu().numpy(), bins=50)
        ax.set_title(f"layer {k + 1}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
