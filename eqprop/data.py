"""Batches in a fixed, reproducible order: the order of epoch e depends only on (seed, e), so a
resumed run sees exactly the batches an uninterrupted one would."""
import signal

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


class _SeededSamples(Dataset):
    """Indexed by (index, seed): a sample's random transforms (augmentation) draw from torch's CPU
    RNG seeded for that sample alone, so a run resumed mid-epoch, or run with another num_workers,
    sees exactly the same images. The RNG state around it is left as it was (dropout uses it)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


def _ignore_stop_signals(worker_id):
    # Ctrl-C reaches the whole process group: a worker that died of it would break the batch the
    # main process is finishing before it saves. Workers end with the loader, or when the main
    # process dies (they watch their parent).
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)


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

    def iterate(self, order=None, start: int = 0, seed: int = 0):
        """Yield (index, x, y) from batch `start` on; `order` is a permutation (None: natural order);
        `seed` seeds the random transforms of the samples (with their index)."""
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
        sampler = [(i, (seed * 1_000_003 + i) % (2**63 - 1)) for i in order[start * bs:].tolist()]
        # its own generator: the loader's seed draw must not shift the global RNG stream on resume
        loader = DataLoader(_SeededSamples(self.dataset), batch_size=bs, sampler=sampler,
                            num_workers=self.num_workers, pin_memory=str(self.device).startswith("cuda"),
                            worker_init_fn=_ignore_stop_signals if self.num_workers else None,
                            generator=torch.Generator().manual_seed(seed))
        for b, (x, y) in enumerate(loader, start=start):
            yield b, x.to(self.device, self.dtype, non_blocking=True), y.to(self.device, non_blocking=True)
