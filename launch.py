"""eqprop's training job: `python launch.py estimator=symmetric loss=cel` (see README.md)."""
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


def _run_dir(resume, load_path, mode, default):
    """Resume and evaluate write into the run they continue; a new run gets a fresh dir."""
    if resume:
        return resume
    if load_path and mode in ("evaluate", "gducheck"):
        return load_path
    return default


OmegaConf.register_new_resolver("eqprop_run_dir", _run_dir, replace=True)
OmegaConf.register_new_resolver("eqprop_subdir", lambda mode: ".hydra" if mode == "train" else f".hydra-{mode}",
                                replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from eqprop.app import main as app_main

    hc = HydraConfig.get()
    return app_main(OmegaConf.to_container(cfg, resolve=True), Path(hc.runtime.output_dir),
                    multirun=hc.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    main()
