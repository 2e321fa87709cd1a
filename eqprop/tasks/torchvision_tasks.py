"""Image data sets read by torchvision (downloaded on first use into task.data_dir): one spec per task."""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

from eqprop.errors import ConfigError

# Channel statistics of each training set, pixels in [0, 1]. The original code normalises CIFAR-10
# by the channel means and three times the channel stds (so inputs stay near [-1, 1] for the hard
# sigmoid neurons); the other colour sets follow the same convention with their own statistics.
# CIFAR-10: the original code's constants (its main.py).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
# CIFAR-100 and SVHN: the standard published per-channel mean/std of the training split (CIFAR-100
# train, 50,000 images; SVHN train_32x32.mat, 73,257 images), the values used across the literature
# (e.g. weiaicunzai/pytorch-cifar100 gives CIFAR-100's to 16 digits); not recomputed here (no download).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)
STD_FACTOR = 3  # the original code's 3 x std


@dataclass(frozen=True)
class TorchvisionTask:
    """How eqprop reads one torchvision data set. Grey-scale sets keep pixels in [0, 1], as the
    original code does for MNIST; colour sets are normalised with mean and STD_FACTOR x std."""
    name: str
    dataset: Union[str, type]              # a torchvision.datasets class, or its name there
    folder: str                            # under task.data_dir: where the files live
    root: str                              # under task.data_dir: the root torchvision is given
    how: str                               # getting the files by hand ({dir}: the folder, {root}: data_dir)
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    flip: bool = False                     # augment: horizontal flip
    crop_padding: int = 0                  # augment: random crop after this much edge padding
    split_arg: bool = False                # SVHN takes split="train"/"test", the others train=True/False

    def dataset_class(self):
        from torchvision import datasets

        return getattr(datasets, self.dataset) if isinstance(self.dataset, str) else self.dataset


def _files_and_urls(spec: TorchvisionTask):
    """The file names torchvision reads in spec.folder, and its download servers (from the class)."""
    cls = spec.dataset_class()
    if hasattr(cls, "resources"):  # MNIST family: the .gz resources, unpacked
        return [Path(name).stem for name, _ in cls.resources], list(cls.mirrors)
    if hasattr(cls, "train_list"):  # CIFAR family: pickled batches and the meta file
        return [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]], [cls.url]
    return [cls.split_list[s][1] for s in ("train", "test")], [cls.split_list["train"][0]]  # SVHN


def _by_hand(cls: str) -> str:
    return (f"on a machine with network access run `python -c \"from torchvision.datasets import {cls}; "
            f"{cls}('data', download=True)\"` and copy data/{cls}/raw/ to {{dir}}/, or point task.data_dir at a "
            f"directory holding {cls}/raw/")


def _tarball(url: str, folder: str) -> str:
    return (f"on a machine with network access download {url} and extract it into {{root}}/ (it unpacks to "
            f"{folder}/), or point task.data_dir at a directory holding {folder}/")


_KRIZ = "https://www.cs.toronto.edu/~kriz/"
SPECS = {
    "mnist": TorchvisionTask("mnist", "MNIST", "MNIST/raw", "", _by_hand("MNIST")),
    # clothes are left-right symmetric, and 2 px shifts keep the item in the 28x28 frame
    "fashion_mnist": TorchvisionTask("fashion_mnist", "FashionMNIST", "FashionMNIST/raw", "",
                                     _by_hand("FashionMNIST"), flip=True, crop_padding=2),
    # the original --data-aug: random crop (edge padding 4) and horizontal flip
    "cifar10": TorchvisionTask("cifar10", "CIFAR10", "cifar-10-batches-py", "",
                               _tarball(_KRIZ + "cifar-10-python.tar.gz", "cifar-10-batches-py"),
                               CIFAR10_MEAN, CIFAR10_STD, flip=True, crop_padding=4),
    "cifar100": TorchvisionTask("cifar100", "CIFAR100", "cifar-100-python", "",
                                _tarball(_KRIZ + "cifar-100-python.tar.gz", "cifar-100-python"),
                                CIFAR100_MEAN, CIFAR100_STD, flip=True, crop_padding=4),
    # digits: no flip (a mirrored 2 or 5 is no digit); torchvision maps SVHN's label 10 to the digit 0
    "svhn": TorchvisionTask("svhn", "SVHN", "SVHN", "SVHN",
                            "on a machine with network access download http://ufldl.stanford.edu/housenumbers/"
                            "train_32x32.mat and test_32x32.mat into {dir}/, or point task.data_dir at a directory "
                            "holding SVHN/", SVHN_MEAN, SVHN_STD, flip=False, crop_padding=4, split_arg=True),
}


def transforms_for(spec: TorchvisionTask, augment: bool, size: int):
    """(train, test) transforms: the augmentation applies to training images only."""
    from torchvision import transforms

    norm = [transforms.ToTensor()]
    if spec.mean is not None:
        norm.append(transforms.Normalize(spec.mean, tuple(STD_FACTOR * s for s in spec.std)))
    aug = []
    if augment:
        aug += [transforms.RandomHorizontalFlip(0.5)] if spec.flip else []
        if spec.crop_padding:
            aug.append(transforms.RandomCrop(size, padding=spec.crop_padding, padding_mode="edge"))
    return transforms.Compose(aug + norm), transforms.Compose(norm)


def load(spec: TorchvisionTask, cfg):
    """(train, test) datasets of the task, from task.data_dir (downloaded there if task.download)."""
    cls = spec.dataset_class()
    root = Path(cfg.data_dir) / spec.root
    train_tf, test_tf = transforms_for(spec, cfg.augment, cfg.in_size)
    try:
        if spec.split_arg:
            return (cls(root, split="train", download=cfg.download, transform=train_tf),
                    cls(root, split="test", download=cfg.download, transform=test_tf))
        return (cls(root, train=True, download=cfg.download, transform=train_tf),
                cls(root, train=False, download=cfg.download, transform=test_tf))
    except Exception as err:  # torchvision raises RuntimeError / URLError / OSError
        where = (Path(cfg.data_dir) / spec.folder).resolve()
        why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        present = all((where / f).is_file() for f in _files_and_urls(spec)[0])
        lead = (f"task={spec.name}: the files in {where} are there but torchvision refused them ({why}); "
                "a truncated or different copy fails its MD5 check: delete them and download again"
                if present else
                f"task={spec.name}: the data set is not in {where} and could not be downloaded ({why})")
        raise ConfigError(f"{lead}. To get it: {spec.how.format(dir=where, root=Path(cfg.data_dir).resolve())}. "
                          "Or run offline with task=mnist5k or task=digits.") from None


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


def check_available(spec: TorchvisionTask, cfg) -> None:
    """ConfigError, saying where the files are expected and how to get them, when they are neither
    on disk nor downloadable from here."""
    where = (Path(cfg.data_dir) / spec.folder).resolve()
    files, urls = _files_and_urls(spec)
    missing = [f for f in files if not (where / f).is_file()]
    if not missing:
        return
    lead = f"task={spec.name}: the data set is not in {where} (missing {', '.join(missing)})"
    tail = (f" To get it: {spec.how.format(dir=where, root=Path(cfg.data_dir).resolve())}. "
            "Or run offline with task=mnist5k or task=digits (no download).")
    if not cfg.download:
        raise ConfigError(f"{lead} and task.download=false. Set task.download=true where the network is reachable."
                          f"{tail}")
    why = unreachable(urls)
    if why:
        raise ConfigError(f"{lead} and cannot be downloaded from here: no connection to the download server "
                          f"({why}).{tail}")
