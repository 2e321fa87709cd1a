"""The run configuration: RunConfig, the schema of conf/config.yaml, made of one schema per config group,
each defined beside the code that uses it (ModelConfig in eqprop.models.config, TaskConfig in
eqprop.tasks.config, ...): the only place where a key, its type, its default and its meaning are written.

Each conf/<group>/*.yaml starts its defaults list with its group's schema (`- schema`) and conf/config.yaml
with `- run_schema`, so Hydra checks types and unknown keys while it composes, and a YAML option only sets
what differs from the defaults there. eqprop.config_errors rewords what composition refuses; each schema's
`check` refuses values of its own group, and `validate` adds the rules that tie groups together. All of it
runs before any compute.
"""
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from eqprop.config_errors import explain
from eqprop.dynamics import Dynamics
from eqprop.errors import ConfigError, expect as _expect
from eqprop.estimators import ESTIMATORS, WITH_POINTS
from eqprop.estimators.config import EstimatorConfig
from eqprop.gdu import GduConfig
from eqprop.loggers.config import LoggerConfig
from eqprop.losses import LossConfig
from eqprop.models.config import ModelConfig
from eqprop.optim import OptimizerConfig
from eqprop.sweep_config import SweepConfig
from eqprop.tasks.config import TaskConfig


@dataclass
class RunConfig:
    mode: str = "train"                      # train | evaluate | gducheck
    epochs: int = 20                         # training epochs (a resumed run: in total)
    seed: int = 0                            # initialisation, data order and random-sign seed
    device: str = "auto"                     # auto | cpu | cuda | cuda:<index>
    dtype: str = "float32"                   # float32 | float64
    resume: Optional[str] = None             # <run dir>: continue that run from its last checkpoint
    load_path: Optional[str] = None          # <run dir>: the run that mode=evaluate / mode=gducheck loads
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    dynamics: Dynamics = field(default_factory=Dynamics)    # eqprop.dynamics
    gdu: GduConfig = field(default_factory=GduConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)  # set by +sweep=<name> (sweeps/sweep/*.yaml)
    experiment: Any = None                   # only a preset that lacks `# @package _global_` lands here (refused)


GROUPS = {"model": ModelConfig, "task": TaskConfig, "estimator": EstimatorConfig, "loss": LossConfig,
          "optimizer": OptimizerConfig, "logger": LoggerConfig}
SCHEMA = "schema"            # conf/<group>/*.yaml: `defaults: [schema, _self_]`
RUN_SCHEMA = "run_schema"    # conf/config.yaml: `defaults: [run_schema, ..., _self_]`


def register_schemas() -> None:
    """Put the schemas where Hydra's defaults lists find them; must run before Hydra composes."""
    cs = ConfigStore.instance()
    cs.store(name=RUN_SCHEMA, node=RunConfig)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=SCHEMA, node=schema)


register_schemas()


def from_dict(d) -> RunConfig:
    """The composed config (DictConfig, or the plain dict launch.py resolves it to) as a checked RunConfig.
    The merge onto the schema catches what composition lets through: keys added with `+`."""
    if isinstance(d, dict) and "sweep" in d and d["sweep"] is None:
        d = {k: v for k, v in d.items() if k != "sweep"}  # a run stored while `sweep` could be null
    try:
        typed = OmegaConf.merge(OmegaConf.structured(RunConfig), d)
    except OmegaConfBaseException as err:
        raise ConfigError(explain(err, RunConfig) or " ".join(str(err).split())) from None
    cfg = OmegaConf.to_object(typed)
    stray = sorted(set(cfg.experiment) & set(RunConfig.__dataclass_fields__)) if cfg.experiment else []
    if stray:
        raise ConfigError(f"the experiment preset sets experiment.{stray[0]} instead of {stray[0]}: start the "
                          "preset file with the line `# @package _global_`")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """ConfigError for the first rule the config breaks: each group's own values (its schema's `check`),
    then the rules that tie groups together."""
    dy = cfg.dynamics
    _expect(cfg.mode in ("train", "evaluate", "gducheck"),
            f"mode={cfg.mode!r} is not known; expected train, evaluate or gducheck")
    _expect(cfg.epochs >= 0, f"epochs={cfg.epochs!r} must be an integer >= 0")
    _expect(cfg.dtype in ("float32", "float64"), f"dtype={cfg.dtype!r} must be float32 or float64")
    problem = dy.problem()
    _expect(problem is None, problem)
    _expect(not dy.tf32 or cfg.dtype == "float32",
            f"dynamics.tf32=true needs dtype=float32 (TF32 rounds float32 products; dtype={cfg.dtype})")
    cfg.estimator.check()
    _check_estimator_fits(cfg)
    for group in (cfg.loss, cfg.task, cfg.model):
        group.check()
    _check_model_fits(cfg)
    cfg.optimizer.check()
    if cfg.mode == "evaluate":
        _expect(cfg.load_path is not None, "mode=evaluate needs load_path=<run dir> (a training run's output dir)")
    cfg.gdu.check()
    for name in cfg.gdu.estimators or []:
        if name in WITH_POINTS:
            problem = ESTIMATORS[name].config_problem(cfg)
            _expect(problem is None, f"gdu.estimators has {name}: {problem}")


def _check_estimator_fits(cfg: RunConfig) -> None:
    """The estimator's own rules about the rest of the run (points, and what it can run)."""
    e, dy = cfg.estimator, cfg.dynamics
    if e.name in WITH_POINTS or e.name == "cep":
        problem = ESTIMATORS[e.name].config_problem(cfg)
        _expect(problem is None, problem)
    if e.name == "bptt":
        _expect(dy.T2 <= dy.T1, f"dynamics.T2={dy.T2} must be <= dynamics.T1={dy.T1} for bptt "
                "(BPTT back-propagates through the last T2 of the T1 free steps)")


def _check_model_fits(cfg: RunConfig) -> None:
    """The model against the task's inputs and classes, the loss's read-out and the optimiser's layer-wise
    settings (their number; their values are the optimiser's own check)."""
    m, t, o = cfg.model, cfg.task, cfg.optimizer
    # evaluate / gducheck take the model from load_path's model.pt: the task is what can change
    loaded = (f"; the model is the one {cfg.load_path} trained: leave task= out to use its own task"
              if cfg.mode != "train" and cfg.load_path else None)
    if m.dense:
        _expect(m.archi[0] == t.input_dim,
                f"model.archi[0]={m.archi[0]} does not match the input of task={t.name} "
                f"({t.input_dim} = {t.in_channels}x{t.in_size}x{t.in_size})"
                + (loaded or f"; set model.archi=[{t.input_dim},...]"))
    else:
        sizes = m.feature_map_sizes(t.in_size)
        _expect(all(s >= 1 for s in sizes),
                f"the conv stack shrinks the {t.in_size}x{t.in_size} input of task={t.name} to nothing "
                f"(feature-map sizes {sizes})" + (loaded or "; reduce kernels/strides/pools or add padding"))
    _expect(m.output_units == t.num_classes,
            f"the model's output layer has {m.output_units} units but task={t.name} has {t.num_classes} classes"
            + (loaded or ""))
    n_syn = m.n_synapses
    n_neuron_layers = n_syn - (1 if cfg.loss.softmax_readout else 0)
    if m.vector_field:
        _expect(n_neuron_layers >= 2,
                f"model={m.name} needs at least two neuron layers to have backward weights "
                f"(it has {n_neuron_layers}); add a hidden layer")
    _expect(n_neuron_layers >= 1, "the softmax read-out needs a hidden layer below it; add one to the model")
    for key in ("lrs", "wds"):
        v = getattr(o, key)
        if v is not None:
            _expect(len(v) == n_syn,
                    f"optimizer.{key}={v} has {len(v)} value(s) but model={m.name} "
                    f"has {n_syn} layers of weights; give one value per layer")
