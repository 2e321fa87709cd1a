"""The run configuration: one dataclass per config group, the only place where a key, its type, its
default and its meaning are written down.

Each conf/<group>/*.yaml starts its defaults list with its group's schema (`- schema`) and conf/config.yaml
with `- run_schema`, so Hydra checks types and unknown keys while it composes, and a YAML option only sets
what differs from the defaults here. eqprop.config_errors rewords what composition refuses; `validate`
checks the rules that tie keys together. All of it runs before any compute.
"""
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from eqprop.activations import ACTIVATIONS
from eqprop.config_errors import explain
from eqprop.dynamics import Dynamics
from eqprop.estimators import EP_ESTIMATORS, ESTIMATORS, WITH_POINTS
from eqprop.losses import LOSSES
from eqprop.models import MODELS
from eqprop.models.synapses import POOLS


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


@dataclass
class ModelConfig:
    name: str = "mlp"                        # mlp | vf_mlp | cnn | vf_cnn (vf_: separate backward weights)
    activation: str = "my_sigmoid"           # neuron non-linearity (eqprop/activations.py)
    scale: Optional[float] = None            # multiply the default initialisation (the original --scale)
    archi: Optional[List[int]] = None        # mlp: layer sizes, input first (the original --archi)
    channels: Optional[List[int]] = None     # cnn: feature maps per conv layer
    kernels: Optional[List[int]] = None      # cnn: kernel size per conv layer
    strides: Optional[List[int]] = None      # cnn: stride per conv layer
    paddings: Optional[List[int]] = None     # cnn: padding per conv layer
    pools: Optional[str] = None              # cnn: one letter per conv layer, m max / a average / i none (2x2)
    fc: Optional[List[int]] = None           # cnn: fully connected sizes after the convs, the output last
    same_update: bool = False                # vf_*: forward and backward weights get the same (averaged) update
    dropouts: Optional[List[float]] = None   # keep probability per layer of weights (1.0 = no dropout)

    @property
    def dense(self) -> bool:
        """Layers given by `archi` (mlp family) rather than by convs and `fc` (cnn family)."""
        return self.name in ("mlp", "vf_mlp")


@dataclass
class TaskConfig:
    name: str = "mnist5k"                    # mnist5k, digits (offline); mnist, fashion_mnist, cifar10, cifar100, svhn
    batch_size: int = 50                     # training mini-batch
    test_batch_size: int = 500               # evaluation batch
    augment: bool = False                    # random crop (pad 4) + horizontal flip (the original --data-aug)
    data_dir: str = "data"                   # where torchvision data sets live
    download: bool = False                   # torchvision: download into data_dir when missing
    in_channels: int = 1                     # image channels (fixed by the task)
    in_size: int = 28                        # image height = width (fixed by the task)
    input_dim: int = 784                     # in_channels * in_size^2, the input of an mlp (fixed by the task)
    num_classes: int = 10                    # output units (fixed by the task)
    num_workers: int = 0                     # DataLoader worker processes (0: load in the main process)
    limit_train: Optional[int] = None        # use only the first N training examples (quick checks)
    limit_test: Optional[int] = None         # use only the first N test examples


@dataclass
class EstimatorConfig:
    name: str = "symmetric"                  # one_sided | random_sign | symmetric | n_point | holomorphic | cep | bptt
    beta: float = 0.5                        # nudging strength (the original --betas 0.0 <beta>); bptt: GDU check only
    points: Optional[int] = None             # n_point / holomorphic: nudged phases (null: 4); others ignore it
    third_phase: bool = False                # cep: then T2 steps back at beta 0 and T2 updating steps at -beta
    random_sign: bool = False                # cep: the sign of beta drawn per batch


@dataclass
class LossConfig:
    name: str = "mse"                        # mse | cel (cross-entropy)
    softmax_readout: bool = False            # output layer outside the energy, trained by cross-entropy (--softmax)


@dataclass
class OptimizerConfig:
    name: str = "sgd"                        # sgd | adam
    lr: float = 0.2                          # every layer, unless lrs is given
    lrs: Optional[List[float]] = None        # layer-wise learning rates, one per layer of weights (the original --lrs)
    weight_decay: float = 0.0                # every layer, unless wds is given
    wds: Optional[List[float]] = None        # layer-wise weight decays (the original --wds)
    momentum: float = 0.0                    # sgd momentum (the original --mmt; unused by adam)
    lr_decay: bool = False                   # cosine annealing (the original --lr-decay)
    T_max: int = 100                         # epochs of the cosine decay
    eta_min: float = 1e-5                    # learning rate at the end of the cosine decay


@dataclass
class GduConfig:
    n_examples: Optional[int] = None         # examples per check (null: the original's, gdu.ORIGINAL_N_EXAMPLES)
    every: int = 0                           # > 0: GDU check every N training batches (the original --check-thm)
    betas: Optional[List[float]] = None      # mode=gducheck: the study over several betas in one run
    estimators: Optional[List[str]] = None   # the study's estimators (null: gdu_study.ESTIMATORS)


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


@dataclass
class SweepConfig:
    name: str = ""                           # the sweeps/sweep/<name>.yaml (or conf/search/<name>.yaml) of a multirun job
    search: Optional[str] = None             # optuna: the job is a trial of a search (+search=<name>)


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

    @property
    def n_synapses(self) -> int:
        m = self.model
        return len(m.archi) - 1 if m.dense else len(m.channels) + len(m.fc)


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


def _expect(ok: bool, msg: str):
    if not ok:
        raise ConfigError(msg)


def _positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


def _non_negative(v: float) -> bool:
    return math.isfinite(v) and v >= 0


def conv_sizes(in_size: int, m: ModelConfig) -> List[int]:
    """Feature-map size after each conv(+pool) layer."""
    sizes, size = [], in_size
    for k, s, p, pool in zip(m.kernels, m.strides, m.paddings, m.pools):
        size = (size + 2 * p - k) // s + 1
        if pool != "i":
            size //= 2
        sizes.append(size)
    return sizes


def validate(cfg: RunConfig) -> None:  # noqa: C901 - one flat list of checks reads best
    m, t, e, lo, o, dy = cfg.model, cfg.task, cfg.estimator, cfg.loss, cfg.optimizer, cfg.dynamics
    _expect(cfg.mode in ("train", "evaluate", "gducheck"),
            f"mode={cfg.mode!r} is not known; expected train, evaluate or gducheck")
    _expect(cfg.epochs >= 0, f"epochs={cfg.epochs!r} must be an integer >= 0")
    _expect(cfg.dtype in ("float32", "float64"), f"dtype={cfg.dtype!r} must be float32 or float64")
    problem = dy.problem()
    _expect(problem is None, problem)
    _expect(not dy.tf32 or cfg.dtype == "float32",
            f"dynamics.tf32=true needs dtype=float32 (TF32 rounds float32 products; dtype={cfg.dtype})")
    _expect(e.name in ESTIMATORS, f"estimator.name={e.name!r} is not known; expected one of {sorted(ESTIMATORS)}")
    if e.name in EP_ESTIMATORS:
        _expect(_positive(e.beta),
                f"estimator.beta={e.beta!r} must be > 0 for estimator={e.name} (the nudging strength; "
                "the sign is set by the estimator)")
    _expect(e.name == "cep" or not (e.third_phase or e.random_sign),
            f"estimator.third_phase / estimator.random_sign are options of estimator=cep, not of "
            f"estimator={e.name} (use estimator=symmetric or estimator=random_sign for those)")
    if e.name in WITH_POINTS or e.name == "cep":  # the estimator's own rules (points, and what it can run)
        problem = ESTIMATORS[e.name].config_problem(cfg)
        _expect(problem is None, problem)
    if e.name == "bptt":
        _expect(dy.T2 <= dy.T1, f"dynamics.T2={dy.T2} must be <= dynamics.T1={dy.T1} for bptt "
                "(BPTT back-propagates through the last T2 of the T1 free steps)")
    _expect(lo.name in LOSSES, f"loss.name={lo.name!r} is not known; expected one of {list(LOSSES)}")
    _expect(not (lo.name == "mse" and lo.softmax_readout),
            "loss.softmax_readout=true needs loss=cel (the read-out is trained with cross-entropy); "
            "use loss=cel or set loss.softmax_readout=false")
    _expect(t.batch_size > 0, f"task.batch_size={t.batch_size!r} must be > 0")
    _expect(t.test_batch_size > 0, f"task.test_batch_size={t.test_batch_size!r} must be > 0")
    from eqprop.tasks import SHAPES  # here: eqprop.tasks imports this module

    _expect(t.name in SHAPES, f"task.name={t.name!r} is not known; expected one of {sorted(SHAPES)}")
    ch, size, classes = SHAPES[t.name]
    for key, want in (("in_channels", ch), ("in_size", size), ("input_dim", ch * size * size),
                      ("num_classes", classes)):
        _expect(getattr(t, key) == want,
                f"task.{key}={getattr(t, key)!r} does not fit task={t.name} ({classes} classes of {ch}x{size}x{size} "
                f"images: task.{key} must be {want}); leave it as the task={t.name} preset sets it")
    for key in ("limit_train", "limit_test"):
        v = getattr(t, key)
        _expect(v is None or v > 0, f"task.{key}={v!r} must be a positive number of examples, or null for all")
    _expect(t.num_workers >= 0, f"task.num_workers={t.num_workers!r} must be >= 0 (0: load in the main process)")
    _expect(o.name in ("sgd", "adam"), f"optimizer.name={o.name!r} must be sgd or adam")
    _expect(m.activation in ACTIVATIONS,
            f"model.activation={m.activation!r} is not known; expected one of {sorted(ACTIVATIONS)}")
    _expect(m.name in MODELS, f"model.name={m.name!r} is not known; expected one of {list(MODELS)}")

    if m.dense:
        _expect(m.archi is not None and len(m.archi) >= 2 and all(a > 0 for a in m.archi),
                f"model.archi={m.archi!r} must list at least two positive layer sizes, input first (e.g. [784,512,10])")
        _expect(m.archi[0] == t.input_dim,
                f"model.archi[0]={m.archi[0]} does not match the input of task={t.name} "
                f"({t.input_dim} = {t.in_channels}x{t.in_size}x{t.in_size}); set model.archi=[{t.input_dim},...]")
        out = m.archi[-1]
    else:
        n = len(m.channels or [])
        _expect(n >= 1 and all(c > 0 for c in m.channels),
                f"model.channels={m.channels!r} must list at least one positive number of feature maps")
        for key in ("kernels", "strides", "paddings"):
            v = getattr(m, key)
            _expect(v is not None and len(v) == n,
                    f"model.{key}={v!r} must have one integer per conv layer ({n}, as model.channels={m.channels})")
        _expect(all(k > 0 for k in m.kernels) and all(s > 0 for s in m.strides) and all(p >= 0 for p in m.paddings),
                "model.kernels and model.strides must be > 0 and model.paddings >= 0")
        _expect(m.pools is not None and len(m.pools) == n and all(c in POOLS for c in m.pools),
                f"model.pools={m.pools!r} must have one letter per conv layer ({n}): m=max, a=average, i=none")
        _expect(m.fc is not None and len(m.fc) >= 1 and all(f > 0 for f in m.fc),
                f"model.fc={m.fc!r} must list at least one fully connected layer (the last one is the output, e.g. [10])")
        sizes = conv_sizes(t.in_size, m)
        _expect(all(s >= 1 for s in sizes),
                f"the conv stack shrinks the {t.in_size}x{t.in_size} input of task={t.name} to nothing "
                f"(feature-map sizes {sizes}); reduce kernels/strides/pools or add padding")
        out = m.fc[-1]
    _expect(out == t.num_classes,
            f"the model's output layer has {out} units but task={t.name} has {t.num_classes} classes")
    n_syn = cfg.n_synapses
    n_neuron_layers = n_syn - (1 if lo.softmax_readout else 0)
    if m.name.startswith("vf_"):
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
    _expect(_positive(o.lr), f"optimizer.lr={o.lr!r} must be a finite number > 0")
    _expect(all(_positive(v) for v in (o.lrs or [])), f"optimizer.lrs={o.lrs} must all be finite numbers > 0")
    _expect(_non_negative(o.weight_decay), f"optimizer.weight_decay={o.weight_decay!r} must be a finite number >= 0")
    _expect(all(_non_negative(v) for v in (o.wds or [])), f"optimizer.wds={o.wds} must all be finite numbers >= 0")
    _expect(_non_negative(o.momentum) and o.momentum < 1, f"optimizer.momentum={o.momentum!r} must lie in [0, 1)")
    if o.lr_decay:
        _expect(o.T_max > 0, f"optimizer.T_max={o.T_max!r} must be > 0 (epochs of the cosine decay)")
        _expect(_non_negative(o.eta_min), f"optimizer.eta_min={o.eta_min!r} must be a finite number >= 0")
    _expect(m.scale is None or _positive(m.scale), f"model.scale={m.scale!r} must be a finite number > 0, or null")
    if m.dropouts is not None:
        _expect(len(m.dropouts) == n_syn,
                f"model.dropouts={m.dropouts} has {len(m.dropouts)} value(s) but model={m.name} has {n_syn} layers; "
                "give one keep probability per layer")
        _expect(all(0 < p <= 1 for p in m.dropouts),
                f"model.dropouts={m.dropouts} are keep probabilities and must lie in (0, 1]")
    if cfg.mode == "evaluate":
        _expect(cfg.load_path is not None, "mode=evaluate needs load_path=<run dir> (a training run's output dir)")
    _expect((cfg.gdu.n_examples is None or cfg.gdu.n_examples > 0) and cfg.gdu.every >= 0,
            "gdu.n_examples must be > 0 (or null for the original's numbers of examples) "
            "and gdu.every >= 0")
    b = cfg.gdu.betas
    if b is not None:
        _expect(len(b) >= 1 and all(v > 0 for v in b),
                f"gdu.betas={b!r} must list betas > 0 for the GDU study (e.g. [0.4,0.2,0.1,0.05]), or be null")
    for name in cfg.gdu.estimators or []:
        _expect(name in EP_ESTIMATORS, f"gdu.estimators has {name!r}; the GDU study compares the EP estimators "
                f"{list(EP_ESTIMATORS)} (against BPTT, its reference)")
        if name in WITH_POINTS:
            problem = ESTIMATORS[name].config_problem(cfg)
            _expect(problem is None, f"gdu.estimators has {name}: {problem}")
