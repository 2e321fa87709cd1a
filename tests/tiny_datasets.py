"""Tiny copies of torchvision data sets in their real on-disk formats, with random pixels and labels.

torchvision reads the MNIST family after checking only that the files exist; CIFAR-100 and SVHN
are also checked against the MD5 of the real downloads, which no tiny file can have.
`with_checksums_of` gives the same torchvision class with the tiny files' own MD5s, so its real
check and reader run on them (nothing in torchvision is patched).
"""
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(raw: Path, n_train: int, n_test: int, n_classes: int = 10, seed: int = 0) -> dict:
    """MNIST-family raw idx files (FashionMNIST/raw, ...): {split: (images uint8 NxHxW, labels)}."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, n_classes, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
        out[prefix] = (images, labels)
    return out


def write_cifar100(folder: Path, n_train: int, n_test: int, seed: int = 0) -> dict:
    """cifar-100-python/{train,test,meta}: pickled dicts, images as rows of 3072 bytes (R, G, B planes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        fine[0] = 99  # the top class index must come through
        entry = {"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": f"{name} batch",
                 "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": data}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        out[name] = (data.reshape(n, 3, 32, 32), fine)
    meta = {"fine_label_names": [f"fine_{i}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i}" for i in range(20)]}
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return out


def write_svhn(folder: Path, n_train: int, n_test: int, seed: int = 0) -> dict:
    """SVHN/{train,test}_32x32.mat: X uint8 (32, 32, 3, N) indexed row, column, channel, image;
    y uint8 (N, 1) in 1..10, where 10 stands for the digit 0."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1), dtype=np.uint8)
        y[0, 0] = 10
        savemat(folder / f"{name}_32x32.mat", {"X": x, "y": y})
        out[name] = (x, y[:, 0])
    return out


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def with_checksums_of(cls, folder: Path):
    """torchvision's CIFAR-100 or SVHN class, expecting the MD5s of the files in folder."""
    if hasattr(cls, "train_list"):
        attrs = {"train_list": [[n, md5(folder / n)] for n, _ in cls.train_list],
                 "test_list": [[n, md5(folder / n)] for n, _ in cls.test_list],
                 "meta": {**cls.meta, "md5": md5(folder / cls.meta["filename"])}}
    else:
        attrs = {"split_list": {s: [url, name, md5(folder / name) if (folder / name).is_file() else h]
                                for s, (url, name, h) in cls.split_list.items()}}
    return type(cls.__name__, (cls,), attrs)
