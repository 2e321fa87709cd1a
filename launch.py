"""eqprop's training job: `python launch.py estimator=symmetric loss=cel` (see README.md)."""
import difflib
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import eqprop.config  # noqa: F401  (registers the schemas that conf/*.yaml extend, before Hydra composes)
from eqprop.run_record import invocation_subdir


def _run_dir(resume, load_path, mode, default):
    """Resume and evaluate write into the run they continue; a new run gets a fresh dir."""
    if resume:
        return resume
    if load_path and mode in ("evaluate", "gducheck"):
        return load_path
    return default


OmegaConf.register_new_resolver("eqprop_run_dir", _run_dir, replace=True)
OmegaConf.register_new_resolver("eqprop_subdir", invocation_subdir, replace=True)
OmegaConf.register_new_resolver("eqprop_root", lambda: str(Path(__file__).resolve().parent), replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from eqprop.app import main as app_main

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        resolved = _resolved(cfg, multirun)
        return app_main(resolved, Path(hc.runtime.output_dir), multirun=multirun,
                        command_line=_command_line(hc, resolved))
    except SystemExit as exit_:
        if exit_.code == 2 and not multirun:
            from eqprop.run_dir_guard import discard_refused

            discard_refused(hc.runtime.output_dir, hc.output_subdir, f"{hc.job.name}.log")
        raise


def _command_line(hc, resolved: dict):
    """What this command line says, for a run that continues: its overrides, the keys they set, and
    the dir where Hydra keeps this command's copy of the config."""
    from eqprop.app import CommandLine
    from eqprop.resume_settings import explicit_prefixes

    overrides = [str(o) for o in hc.overrides.task]

    def compose_without(kept):
        from hydra import compose

        plain = [o for o in kept if not o.lstrip("+~").startswith("hydra")]
        return OmegaConf.to_container(compose(config_name="config", overrides=plain), resolve=True)

    choices = OmegaConf.to_container(hc.runtime.choices)
    return CommandLine(overrides, hc.output_subdir,
                       lambda: explicit_prefixes(overrides, choices, resolved, compose_without))


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


def _check_top_level_keys(argv) -> None:
    """A typo in a top-level key (`estimater=symmetric`) gets eqprop's hint at once, where Hydra would
    first suggest adding it with `+estimater=`; exit 2 before anything is written."""
    from dataclasses import fields

    conf = Path(__file__).resolve().parent / "conf"
    known = {p.name for p in conf.iterdir() if p.is_dir()} | {f.name for f in fields(eqprop.config.RunConfig)} \
        | {"hydra", "sweep"}
    for arg in argv:
        m = re.match(r"([A-Za-z_][\w-]*)[.@/=]", arg)  # plain overrides; +key=... is eqprop.config's to check
        if not m or "=" not in arg or m.group(1) in known:
            continue
        key = m.group(1)
        close = difflib.get_close_matches(key, sorted(known - {"hydra"}), n=1)
        hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(sorted(known))}"
        print(f"[eqprop] error: unknown config key {key}; {hint}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    from eqprop.config_errors import refuse_what_does_not_compose

    _check_top_level_keys(sys.argv[1:])
    # a wrong type or unknown key: eqprop's message and exit 2, rather than Hydra's wording and exit 1
    refuse_what_does_not_compose(str(Path(__file__).resolve().parent / "conf"), "config", sys.argv[1:],
                                 eqprop.config.RunConfig)
    main()
