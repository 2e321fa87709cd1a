"""Batches in a fixed, reproducible order: the order of epoch e depends only on (seed, e), so a
resumed run sees exactly the batches an uninterrupted one would."""
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


def _tensors(ds):
    """The (x, y) tensors behind an in-memory dataset, or None."""
    if isinstance(ds, TensorDataset):
        return ds.tensors
    if isinstance(ds, Subset):
        inner = _tensors(ds.dataset)
        if inner is not None:
            idx = torch.as_tensor(list(ds.indices))
            return tuple(t[idx] for t in inner)
    return None


class Batches:
    def __init__(self, dataset, batch_size: int, num_workers: int = 0, device="cpu", dtype=torch.float32):
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.device, self.dtype = device, dtype
        t = _tensors(dataset)
        # In-memory tasks live on the device once, and batches are slices: no loader overhead.
        self.tensors = None if t is None else (t[0].to(device, dtype), t[1].to(device))

    def __len__(self):
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def iterate(self, order=None, start: int = 0):
        """Yield (index, x, y) from batch `start` on; `order` is a permutation (None: natural order)."""
        n, bs = len(self.dataset), self.batch_size
        if order is None:
            order = torch.arange(n)
        if self.tensors is not None:
            x_all, y_all = self.tensors
            order = order.to(x_all.device)
            for b in range(start, len(self)):
                idx = order[b * bs:(b + 1) * bs]
                yield b, x_all[idx], y_all[idx]
            return
        sampler = order[start * bs:].tolist()
        loader = DataLoader(self.dataset, batch_size=bs, sampler=sampler, num_workers=self.num_workers,
                            pin_memory=str(self.device).startswith("cuda"))
        for b, (x, y) in enumerate(loader, start=start):
            yield b, x.to(self.device, self.dtype, non_blocking=True), y.to(self.device, non_blocking=True)
