"""Layer-wise optimisers: one parameter group per synapse, with its own lr and weight decay."""
import torch

from eqprop.config import OptimizerConfig


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
