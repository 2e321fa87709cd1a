"""Layer-wise optimisers: one parameter group per synapse, with its own lr and weight decay."""
from dataclasses import dataclass
from typing import List, Optional

import torch

from eqprop.errors import expect, non_negative, positive


@dataclass
class OptimizerConfig:
    """The `optimizer` config group's schema (conf/optimizer/*.yaml extend it)."""
    name: str = "sgd"                        # sgd | adam
    lr: float = 0.2                          # every layer, unless lrs is given
    lrs: Optional[List[float]] = None        # layer-wise learning rates, one per layer of weights (the original --lrs)
    weight_decay: float = 0.0                # every layer, unless wds is given
    wds: Optional[List[float]] = None        # layer-wise weight decays (the original --wds)
    momentum: float = 0.0                    # sgd momentum (the original --mmt; unused by adam)
    lr_decay: bool = False                   # cosine annealing (the original --lr-decay)
    T_max: int = 100                         # epochs of the cosine decay
    eta_min: float = 1e-5                    # learning rate at the end of the cosine decay

    def check(self) -> None:
        """ConfigError for a value no optimiser takes; the number of layer-wise values is checked against the
        model by eqprop.config.validate."""
        expect(self.name in ("sgd", "adam"), f"optimizer.name={self.name!r} must be sgd or adam")
        expect(positive(self.lr), f"optimizer.lr={self.lr!r} must be a finite number > 0")
        expect(all(positive(v) for v in (self.lrs or [])), f"optimizer.lrs={self.lrs} must all be finite numbers > 0")
        expect(non_negative(self.weight_decay),
               f"optimizer.weight_decay={self.weight_decay!r} must be a finite number >= 0")
        expect(all(non_negative(v) for v in (self.wds or [])),
               f"optimizer.wds={self.wds} must all be finite numbers >= 0")
        expect(non_negative(self.momentum) and self.momentum < 1,
               f"optimizer.momentum={self.momentum!r} must lie in [0, 1)")
        if self.lr_decay:
            expect(self.T_max > 0, f"optimizer.T_max={self.T_max!r} must be > 0 (epochs of the cosine decay)")
            expect(non_negative(self.eta_min), f"optimizer.eta_min={self.eta_min!r} must be a finite number >= 0")


def build_optimizer(cfg: OptimizerConfig, model):
    groups = model.layer_groups()
    lrs = cfg.lrs or [cfg.lr] * len(groups)
    wds = cfg.wds or [cfg.weight_decay] * len(groups)
    params = [{"params": g, "lr": lr, "weight_decay": wd} for g, lr, wd in zip(groups, lrs, wds)]
    if cfg.name == "sgd":
        opt = torch.optim.SGD(params, lr=lrs[0], momentum=cfg.momentum)
    else:
        opt = torch.optim.Adam(params, lr=lrs[0])
    sched = None
    if cfg.lr_decay:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.T_max, eta_min=cfg.eta_min)
    return opt, sched
