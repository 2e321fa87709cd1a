"""What one job needs, built from its config: the device, then data, model, estimator and optimiser."""
from pathlib import Path

import torch

from eqprop.config import RunConfig
from eqprop.errors import ConfigError
from eqprop.data import Batches
from eqprop.dynamics import set_tf32
from eqprop.estimators import build_estimator
from eqprop.losses import build_loss
from eqprop.models import build_model
from eqprop.optim import build_optimizer
from eqprop.tasks import build_task


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).isdigit():  # the original --device 0
        name = f"cuda:{name}"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:<index>") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} was asked for but no CUDA GPU is available here; use device=cpu "
                              "(or device=auto to take a GPU when there is one)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name}: only {torch.cuda.device_count()} GPU(s) here")
    return dev


class Run:
    """Everything one job needs, built from the config (data loaded, model initialised)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, device: torch.device, data=True):
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), device
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        torch.manual_seed(cfg.seed)
        self.loss = build_loss(cfg.loss.name, cfg.loss.softmax_readout)
        self.model = build_model(cfg.model, self.loss, cfg.task.in_channels, cfg.task.in_size)
        self.model.to(device=device, dtype=self.dtype)
        e = cfg.estimator
        self.estimator = build_estimator(e.name, e.beta, e.points, e.third_phase, e.random_sign)
        d = cfg.dynamics
        self.dyn = d  # graph is ignored off CUDA by relax itself
        if device.type == "cuda":
            set_tf32(d.tf32)  # explicit either way: this torch's cuDNN default is TF32 on
        self.optimizer, self.scheduler = build_optimizer(cfg.optimizer, self.model)
        if hasattr(self.estimator, "bind_optimizer"):  # an estimator that moves the weights itself (cep)
            self.estimator.bind_optimizer(self.optimizer)
        if data:
            train, test = build_task(cfg.task)
            self.train = Batches(train, cfg.task.batch_size, cfg.task.num_workers, device, self.dtype)
            self.test = Batches(test, cfg.task.test_batch_size, cfg.task.num_workers, device, self.dtype)
