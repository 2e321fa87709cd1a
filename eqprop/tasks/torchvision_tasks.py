"""MNIST and CIFAR-10 through torchvision (downloaded on first use into task.data_dir)."""
from pathlib import Path

from eqprop.config import ConfigError

# CIFAR-10 normalisation of the original code: channel means, three times the channel stds.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (3 * 0.2023, 3 * 0.1994, 3 * 0.2010)


def _load(cls, root: Path, download: bool, train_tf, test_tf, name: str, how: str):
    try:
        return cls(root, train=True, download=download, transform=train_tf), \
            cls(root, train=False, download=download, transform=test_tf)
    except Exception as err:  # torchvision raises RuntimeError / URLError / OSError
        raise ConfigError(
            f"task={name}: the data set is not in {root.resolve()} and could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). {how} "
            "Or run offline with task=mnist5k or task=digits."
        ) from None


def mnist(cfg):
    from torchvision import datasets, transforms

    tf = transforms.ToTensor()
    return _load(datasets.MNIST, Path(cfg.data_dir), cfg.download, tf, tf, "mnist",
                 "Download it with network access (task.download=true) or copy the MNIST/raw files "
                 "there (task.data_dir=<dir containing MNIST/>).")


def cifar10(cfg):
    from torchvision import datasets, transforms

    norm = [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)]
    aug = [transforms.RandomHorizontalFlip(0.5), transforms.RandomCrop(32, padding=4, padding_mode="edge")]
    train_tf = transforms.Compose((aug if cfg.augment else []) + norm)
    return _load(datasets.CIFAR10, Path(cfg.data_dir), cfg.download, train_tf, transforms.Compose(norm),
                 "cifar10", "Download it with network access (task.download=true) or extract "
                 "cifar-10-python.tar.gz there (task.data_dir=<dir containing cifar-10-batches-py/>).")
