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


def _mnist_files(cfg):
    from torchvision import datasets

    raw = Path(cfg.data_dir) / "MNIST" / "raw"
    return raw, [raw / Path(name).stem for name, _ in datasets.MNIST.resources], list(datasets.MNIST.mirrors)


def _cifar10_files(cfg):
    from torchvision import datasets

    d = Path(cfg.data_dir) / datasets.CIFAR10.base_folder
    names = [n for n, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list]
    return d, [d / n for n in names], [datasets.CIFAR10.url]


PROBE_TIMEOUT_S = 3.0


def unreachable(urls, timeout: float = PROBE_TIMEOUT_S):
    """None when one of the urls' hosts accepts a connection, else why not. torchvision downloads
    without a timeout, so behind a firewall that drops packets it would hang; and getaddrinfo has
    no timeout of its own, hence the thread."""
    import socket
    import threading
    import urllib.parse
    import urllib.request

    proxies = urllib.request.getproxies()
    errors = []

    def probe():
        for url in urls:
            u = urllib.parse.urlsplit(proxies.get(urllib.parse.urlsplit(url).scheme, url))
            port = u.port or (443 if u.scheme == "https" else 80)
            try:
                socket.create_connection((u.hostname, port), timeout=timeout).close()
                errors.clear()
                return
            except OSError as err:
                errors.append(f"{u.hostname}:{port}: {err}")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout * len(urls) + 1.0)
    if t.is_alive():
        return f"no answer within {timeout * len(urls) + 1.0:.0f} s"
    return "; ".join(errors) or None


def _check(cfg, name: str, files, how: str) -> None:
    where, paths, urls = files(cfg)
    missing = [p.name for p in paths if not p.is_file()]
    if not missing:
        return
    lead = f"task={name}: the data set is not in {where.resolve()} (missing {', '.join(missing)})"
    tail = f" To get it: {how}. Or run offline with task=mnist5k or task=digits (no download)."
    if not cfg.download:
        raise ConfigError(f"{lead} and task.download=false. Set task.download=true where the network is reachable."
                          f"{tail}")
    why = unreachable(urls)
    if why:
        raise ConfigError(f"{lead} and cannot be downloaded from here: no connection to the download server "
                          f"({why}).{tail}")


def check_mnist(cfg) -> None:
    raw = (Path(cfg.data_dir) / "MNIST" / "raw").resolve()
    _check(cfg, "mnist", _mnist_files, "on a machine with network access run `python -c \"from torchvision.datasets "
           f"import MNIST; MNIST('data', download=True)\"` and copy data/MNIST/raw/ to {raw}/, or point "
           "task.data_dir at a directory holding MNIST/raw/")


def check_cifar10(cfg) -> None:
    root = Path(cfg.data_dir).resolve()
    _check(cfg, "cifar10", _cifar10_files, "on a machine with network access download "
           f"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into {root}/ (it unpacks to "
           "cifar-10-batches-py/), or point task.data_dir at a directory holding cifar-10-batches-py/")


AVAILABILITY = {"mnist": check_mnist, "cifar10": check_cifar10}
