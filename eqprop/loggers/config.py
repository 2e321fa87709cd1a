"""The `logger` config group's schema (conf/logger/*.yaml extend it). Its values are checked where the
logger is built (eqprop.loggers.check_logger_config), before the run writes anything."""
from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class LoggerConfig:
    name: str = "none"                       # none (the run's files only) | wandb
    project: str = "eqprop"                  # wandb: W&B project
    entity: Optional[str] = None             # wandb: W&B user or team (null: the account logged in)
    mode: str = "auto"                       # wandb: auto (online when logged in) | online | offline | disabled
    group: Optional[str] = None              # wandb: W&B group (null: task-model-loss)
    job_type: Optional[str] = None           # wandb: W&B job type (null: the estimator)
    run_name: Optional[str] = None           # wandb: W&B run name (null: W&B's own)
    tags: List[str] = field(default_factory=list)  # wandb: extra tags (estimator, EP/BPTT, task, model, loss are added)
    notes: Optional[str] = None              # wandb: run notes
    histograms: bool = True                  # wandb: per-layer histograms of the neural activity, every epoch
    init_timeout: float = 30.0               # wandb: seconds to reach W&B before falling back to offline logging
    finish_timeout: float = 60.0             # wandb: seconds an online run waits for its uploads (0: no limit)
