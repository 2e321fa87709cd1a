"""eqprop's training job: `python launch.py estimator=symmetric loss=cel` (see README.md)."""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import eqprop.config  # noqa: F401  (registers the schemas that conf/*.yaml extend, before Hydra composes)


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
OmegaConf.register_new_resolver("eqprop_root", lambda: str(Path(__file__).resolve().parent), replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from eqprop.app import main as app_main

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        return app_main(_resolved(cfg, multirun), Path(hc.runtime.output_dir), multirun=multirun)
    except SystemExit as exit_:
        if exit_.code == 2 and not multirun:
            _discard_refused_run_dir(hc)
        raise


def _resolved(cfg: DictConfig, multirun: bool) -> dict:
    """The config as plain data; an interpolation that cannot be resolved is bad input (exit 2)."""
    from omegaconf.errors import OmegaConfBaseException

    from eqprop.config import ConfigError

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        msg = " ".join(str(err).split())
        if multirun:
            raise ConfigError(msg) from None
        print(f"[eqprop] error: {msg}", file=sys.stderr, flush=True)
        sys.exit(2)


def _discard_refused_run_dir(hc) -> None:
    """A refused config leaves no run behind: Hydra has already written its config copy and log into
    a fresh run dir, so remove them, but only from a dir that holds nothing else."""
    run_dir = Path(hc.runtime.output_dir)
    ours = {run_dir / f"{hc.job.name}.log"}
    if hc.output_subdir:
        ours |= {run_dir / hc.output_subdir / f for f in ("config.yaml", "hydra.yaml", "overrides.yaml")}
    try:
        files = [p for p in run_dir.rglob("*") if not p.is_dir()]
        if not set(files) <= ours:
            return
        for f in files:
            f.unlink()
        if hc.output_subdir and (run_dir / hc.output_subdir).is_dir():
            (run_dir / hc.output_subdir).rmdir()
        run_dir.rmdir()
    except OSError:  # not ours to fight over: the run dir merely stays
        pass


if __name__ == "__main__":
    from eqprop.config_errors import refuse_what_does_not_compose

    # a wrong type or unknown key: eqprop's message and exit 2, rather than Hydra's wording and exit 1
    refuse_what_does_not_compose(str(Path(__file__).resolve().parent / "conf"), "config", sys.argv[1:],
                                 eqprop.config.RunConfig)
    main()
