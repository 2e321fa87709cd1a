"""Run loggers: `none` (files only) and `wandb`. The engine only talks to this interface."""
from pathlib import Path


class NullLogger:
    """Logs nothing beyond the run's own files (metrics.jsonl, plots, checkpoints)."""

    def log_epoch(self, metrics: dict, state=None, model=None) -> None:
        pass

    def log_gdu(self, metrics: dict, step: int) -> None:
        pass

    def log_summary(self, summary: dict) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


def check_logger_config(logger_cfg) -> None:
    """ConfigError for logger settings that cannot work: checked with the rest of the config, before
    the run writes anything."""
    name = logger_cfg.name
    if name == "wandb":
        from eqprop.loggers.wandb_logger import check_config

        check_config(logger_cfg)
    elif name != "none":
        from eqprop.errors import ConfigError

        raise ConfigError(f"logger.name={name!r} is not known; expected none or wandb (logger=none or logger=wandb)")


def build_logger(logger_cfg, run_dir: Path, config: dict):
    """logger_cfg: the `logger` config group (eqprop.config.LoggerConfig)."""
    check_logger_config(logger_cfg)
    if logger_cfg.name == "none":
        return NullLogger()
    from eqprop.loggers.wandb_logger import WandbLogger

    return WandbLogger(logger_cfg, run_dir, config)
