"""Tasks: (train, test) datasets of (x, y) with x shaped (channels, size, size)."""
from torch.utils.data import Subset

from eqprop.errors import ConfigError
from eqprop.tasks import offline, torchvision_tasks
from eqprop.tasks.config import TaskConfig

TASKS = {
    "mnist5k": lambda cfg: offline.mnist5k(),
    "digits": lambda cfg: offline.digits(),
    # torchvision's data sets, looked up at call time: cfg.name is the key
    **{name: lambda cfg: torchvision_tasks.load(torchvision_tasks.SPECS[cfg.name], cfg)
       for name in torchvision_tasks.SPECS},
}


def check_available(cfg: TaskConfig) -> None:
    """Raise ConfigError, saying where the data is expected and how to get it, when a task's data
    is neither on disk nor downloadable from here. Seconds at most, so bad input fails early."""
    if cfg.name in torchvision_tasks.SPECS:
        torchvision_tasks.check_available(torchvision_tasks.SPECS[cfg.name], cfg)


def build_task(cfg: TaskConfig):
    if cfg.name not in TASKS:
        raise ConfigError(f"task.name={cfg.name!r} is not known; expected one of {sorted(TASKS)}")
    train, test = TASKS[cfg.name](cfg)
    if cfg.limit_train:
        train = Subset(train, range(min(cfg.limit_train, len(train))))
    if cfg.limit_test:
        test = Subset(test, range(min(cfg.limit_test, len(test))))
    x0, _ = train[0]
    if tuple(x0.shape) != (cfg.in_channels, cfg.in_size, cfg.in_size):
        raise ConfigError(f"task={cfg.name} yields inputs of shape {tuple(x0.shape)} but the config says "
                          f"in_channels={cfg.in_channels}, in_size={cfg.in_size}")
    return train, test
