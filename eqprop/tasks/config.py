"""The `task` config group: its schema (conf/task/*.yaml extend it), each task's image shape, and the
checks of the task.* values, all made before any data is read."""
from dataclasses import dataclass
from typing import Optional

from eqprop.errors import expect

# (channels, size, classes) of each task's images
SHAPES = {"mnist5k": (1, 28, 10), "digits": (1, 8, 10), "mnist": (1, 28, 10), "cifar10": (3, 32, 10),
          "fashion_mnist": (1, 28, 10), "cifar100": (3, 32, 100), "svhn": (3, 32, 10)}


@dataclass
class TaskConfig:
    name: str = "mnist5k"                    # mnist5k, digits (offline); mnist, fashion_mnist, cifar10, cifar100, svhn
    batch_size: int = 50                     # training mini-batch
    test_batch_size: int = 500               # evaluation batch
    augment: bool = False                    # random crop (pad 4) + horizontal flip (the original --data-aug)
    data_dir: str = "data"                   # where torchvision data sets live
    download: bool = False                   # torchvision: download into data_dir when missing
    in_channels: int = 1                     # image channels (fixed by the task)
    in_size: int = 28                        # image height = width (fixed by the task)
    input_dim: int = 784                     # in_channels * in_size^2, the input of an mlp (fixed by the task)
    num_classes: int = 10                    # output units (fixed by the task)
    num_workers: int = 0                     # DataLoader worker processes (0: load in the main process)
    limit_train: Optional[int] = None        # use only the first N training examples (quick checks)
    limit_test: Optional[int] = None         # use only the first N test examples

    def check(self) -> None:
        """ConfigError unless the task is known and the task.* values fit it."""
        expect(self.batch_size > 0, f"task.batch_size={self.batch_size!r} must be > 0")
        expect(self.test_batch_size > 0, f"task.test_batch_size={self.test_batch_size!r} must be > 0")
        expect(self.name in SHAPES, f"task.name={self.name!r} is not known; expected one of {sorted(SHAPES)}")
        ch, size, classes = SHAPES[self.name]
        for key, want in (("in_channels", ch), ("in_size", size), ("input_dim", ch * size * size),
                          ("num_classes", classes)):
            expect(getattr(self, key) == want,
                   f"task.{key}={getattr(self, key)!r} does not fit task={self.name} ({classes} classes of "
                   f"{ch}x{size}x{size} images: task.{key} must be {want}); leave it as the task={self.name} "
                   "preset sets it")
        for key in ("limit_train", "limit_test"):
            v = getattr(self, key)
            expect(v is None or v > 0, f"task.{key}={v!r} must be a positive number of examples, or null for all")
        expect(self.num_workers >= 0,
               f"task.num_workers={self.num_workers!r} must be >= 0 (0: load in the main process)")
