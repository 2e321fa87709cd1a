"""The typed run configuration: Hydra's composed YAML -> dataclasses, checked before any compute.

Every check names the key, the bad value and what is expected, so a typo costs seconds.
"""
import difflib
import math
from dataclasses import dataclass, field, fields
from typing import Any, List, Optional, Union, get_args, get_origin, get_type_hints

from eqprop.activations import ACTIVATIONS
from eqprop.estimators import EP_ESTIMATORS, ESTIMATORS, WITH_POINTS
from eqprop.losses import LOSSES
from eqprop.models import MODELS
from eqprop.models.synapses import POOLS


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


@dataclass
class ModelConfig:
    name: str = "mlp"
    activation: str = "my_hard_sig"
    scale: Optional[float] = None
    archi: Optional[List[int]] = None        # mlp: layer sizes, input first
    channels: Optional[List[int]] = None     # cnn: feature maps per conv layer
    kernels: Optional[List[int]] = None
    strides: Optional[List[int]] = None
    paddings: Optional[List[int]] = None
    pools: Optional[str] = None              # one of m/a/i per conv layer
    fc: Optional[List[int]] = None           # cnn: fully connected sizes after the convs
    same_update: bool = False                # vf_*: W and B get the same (averaged) update
    dropouts: Optional[List[float]] = None   # keep probability per layer (1.0 = no dropout)


@dataclass
class TaskConfig:
    name: str = "mnist5k"
    batch_size: int = 64
    test_batch_size: int = 500
    augment: bool = False
    data_dir: str = "data"
    download: bool = True
    in_channels: int = 1
    in_size: int = 28
    input_dim: int = 784
    num_classes: int = 10
    num_workers: int = 0
    limit_train: Optional[int] = None        # use only the first N training examples (quick checks)
    limit_test: Optional[int] = None


@dataclass
class EstimatorConfig:
    name: str = "symmetric"
    beta: float = 0.5
    points: Optional[int] = None             # n_point / holomorphic: nudged phases (null: 4); others ignore it
    third_phase: bool = False                # cep: then T2 steps back at beta 0 and T2 updating steps at -beta
    random_sign: bool = False                # cep: the sign of beta drawn per batch


@dataclass
class LossConfig:
    name: str = "mse"
    softmax_readout: bool = False


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.05                         # every layer, unless lrs is given
    lrs: Optional[List[float]] = None        # layer-wise learning rates (the original --lrs)
    weight_decay: float = 0.0
    wds: Optional[List[float]] = None        # layer-wise weight decays (the original --wds)
    momentum: float = 0.0
    lr_decay: bool = False                   # cosine annealing (the original --lr-decay)
    T_max: int = 100
    eta_min: float = 1e-5


@dataclass
class DynamicsConfig:
    T1: int = 30
    T2: int = 10
    update: str = "sync"                     # sync (paper) | async (even then odd layers)
    tol: float = 0.0                         # > 0: stop a phase once max |ds| < tol (T is the cap)
    check_every: Optional[int] = None        # steps between tol checks (None: CUDA 10, CPU 5 dense / 1 conv)
    batch_nudged: bool = True                # +beta and -beta phases as one relaxation of 2x the batch
    graph: bool = False                      # CUDA graphs for the relaxation loop (ignored off CUDA)
    channels_last: bool = False              # conv states channels-last (faster, other rounding)
    tf32: bool = False                       # CUDA: TF32 tensor cores for float32 convs/matmuls
    native: bool = True                      # CPU dense nets: the compiled kernel (eqprop/kernels)


@dataclass
class GduConfig:
    n_examples: Optional[int] = None         # examples per check (null: the original's, gdu.ORIGINAL_N_EXAMPLES)
    every: int = 0                           # > 0: run the check every N training batches (--check-thm)
    betas: Optional[List[float]] = None      # gducheck study: several betas in one run
    estimators: Optional[List[str]] = None   # the study's estimators (null: gdu_study.ESTIMATORS)


@dataclass
class RunConfig:
    mode: str = "train"
    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    resume: Optional[str] = None
    load_path: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    gdu: GduConfig = field(default_factory=GduConfig)
    logger: Any = None                       # passed as a plain dict to eqprop.loggers
    sweep: Any = None                        # sweep presets only carry metadata here

    @property
    def n_synapses(self) -> int:
        m = self.model
        if m.name in ("mlp", "vf_mlp"):
            return len(m.archi) - 1
        return len(m.channels) + len(m.fc)


SECTIONS = {"model": ModelConfig, "task": TaskConfig, "estimator": EstimatorConfig, "loss": LossConfig,
            "optimizer": OptimizerConfig, "dynamics": DynamicsConfig, "gdu": GduConfig}
FREE_FORM = {"logger", "sweep", "experiment"}


def _unknown(where: str, key: str, known) -> ConfigError:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"; did you mean {where}{close[0]}?" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"unknown config key {where}{key}{hint}")


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(tp) -> str:
    if get_origin(tp) is Union:
        return " or ".join([_describe(a) for a in get_args(tp) if a is not type(None)] + ["null"])
    if get_origin(tp) in (list, List):
        return f"a list of {_describe(get_args(tp)[0]).split(' ', 1)[1]}s" if get_args(tp)[0] in (int, float) \
            else "a list"
    return _KINDS.get(tp, getattr(tp, "__name__", str(tp)))


def _typed(value, tp):
    """value converted to the annotated type; TypeError when it does not fit. The YAML and the
    command line give untyped values, so `task.batch_size=abc` must be caught here rather than
    turn into a TypeError deep inside the run."""
    if tp is Any:
        return value
    if get_origin(tp) is Union:
        if value is None and type(None) in get_args(tp):
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _typed(value, inner)
    if get_origin(tp) in (list, List):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [_typed(v, get_args(tp)[0]) for v in value]
    if isinstance(value, bool) and tp is not bool:  # YAML true/false are not 1/0 here
        raise TypeError
    if tp is float and isinstance(value, (int, float)):
        return float(value)
    if tp is str and isinstance(value, (int, float)):  # device=0, a run dir named 2026
        return str(value)
    if not isinstance(value, tp):
        raise TypeError
    return value


def _build(cls, data: dict, where: str):
    names = {f.name for f in fields(cls)}
    for k in data:
        if k not in names:
            raise _unknown(where, k, names)
    return cls(**_typed_fields(cls, data, where))


def _typed_fields(cls, data: dict, where: str) -> dict:
    hints = get_type_hints(cls)
    out = {}
    for k, v in data.items():
        try:
            out[k] = _typed(v, hints[k])
        except TypeError:
            shown = "null" if v is None else str(v).lower() if isinstance(v, bool) else repr(v)
            raise ConfigError(f"{where}{k}={shown} must be {_describe(hints[k])}") from None
    return out


def from_dict(d: dict) -> RunConfig:
    """Build a RunConfig from a resolved plain dict (OmegaConf.to_container(cfg, resolve=True))."""
    top = {f.name for f in fields(RunConfig)} | FREE_FORM
    kwargs = {}
    for k, v in d.items():
        if k not in top:
            raise _unknown("", k, top)
        if k in SECTIONS:
            if not isinstance(v, dict):
                raise ConfigError(f"{k} must be a config group (e.g. {k}=<option>), got {v!r}")
            kwargs[k] = _build(SECTIONS[k], v, f"{k}.")
        elif k == "experiment":
            # a preset without `# @package _global_` lands here, and would silently change nothing
            stray = sorted(set(v) & top) if isinstance(v, dict) else []
            if stray:
                raise ConfigError(f"the experiment preset sets experiment.{stray[0]} instead of {stray[0]}: start "
                                  "the preset file with the line `# @package _global_`")
            continue
        else:
            kwargs[k] = v
    plain = {k: v for k, v in kwargs.items() if k not in SECTIONS}
    kwargs.update(_typed_fields(RunConfig, plain, ""))
    cfg = RunConfig(**kwargs)
    validate(cfg)
    return cfg


def _expect(ok: bool, msg: str):
    if not ok:
        raise ConfigError(msg)


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _non_negative(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _is_int_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)


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
    _expect(isinstance(cfg.epochs, int) and cfg.epochs >= 0, f"epochs={cfg.epochs!r} must be an integer >= 0")
    _expect(cfg.dtype in ("float32", "float64"), f"dtype={cfg.dtype!r} must be float32 or float64")
    _expect(isinstance(dy.T1, int) and dy.T1 > 0, f"dynamics.T1={dy.T1!r} must be a positive integer (steps of the free phase)")
    _expect(isinstance(dy.T2, int) and dy.T2 > 0, f"dynamics.T2={dy.T2!r} must be a positive integer (steps of the nudged phase)")
    _expect(dy.update in ("sync", "async"), f"dynamics.update={dy.update!r} must be sync or async")
    _expect(dy.tol >= 0, f"dynamics.tol={dy.tol!r} must be >= 0 (0 disables the convergence stop)")
    _expect(dy.check_every is None or (isinstance(dy.check_every, int) and dy.check_every >= 1),
            f"dynamics.check_every={dy.check_every!r} must be null (auto) or an integer >= 1 "
            "(steps between convergence checks)")
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

    if m.name in ("mlp", "vf_mlp"):
        _expect(_is_int_list(m.archi) and len(m.archi) >= 2 and all(a > 0 for a in m.archi),
                f"model.archi={m.archi!r} must list at least two positive layer sizes, input first (e.g. [784,512,10])")
        _expect(m.archi[0] == t.input_dim,
                f"model.archi[0]={m.archi[0]} does not match the input of task={t.name} "
                f"({t.input_dim} = {t.in_channels}x{t.in_size}x{t.in_size}); set model.archi=[{t.input_dim},...]")
        out = m.archi[-1]
    else:
        n = len(m.channels or [])
        _expect(_is_int_list(m.channels) and n >= 1 and all(c > 0 for c in m.channels),
                f"model.channels={m.channels!r} must list at least one positive number of feature maps")
        for key in ("kernels", "strides", "paddings"):
            v = getattr(m, key)
            _expect(_is_int_list(v) and len(v) == n,
                    f"model.{key}={v!r} must have one integer per conv layer ({n}, as model.channels={m.channels})")
        _expect(all(k > 0 for k in m.kernels) and all(s > 0 for s in m.strides) and all(p >= 0 for p in m.paddings),
                "model.kernels and model.strides must be > 0 and model.paddings >= 0")
        _expect(isinstance(m.pools, str) and len(m.pools) == n and all(c in POOLS for c in m.pools),
                f"model.pools={m.pools!r} must have one letter per conv layer ({n}): m=max, a=average, i=none")
        _expect(_is_int_list(m.fc) and len(m.fc) >= 1 and all(f > 0 for f in m.fc),
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
            _expect(isinstance(v, list) and len(v) == n_syn,
                    f"optimizer.{key}={v} has {len(v) if isinstance(v, list) else v!r} value(s) but model={m.name} "
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
        _expect(isinstance(m.dropouts, list) and len(m.dropouts) == n_syn,
                f"model.dropouts={m.dropouts} has "
                f"{len(m.dropouts) if isinstance(m.dropouts, list) else m.dropouts!r} value(s) "
                f"but model={m.name} has {n_syn} layers; give one keep probability per layer")
        _expect(all(isinstance(p, (int, float)) and 0 < p <= 1 for p in m.dropouts),
                f"model.dropouts={m.dropouts} are keep probabilities and must lie in (0, 1]")
    if cfg.mode == "evaluate":
        _expect(cfg.load_path is not None, "mode=evaluate needs load_path=<run dir> (a training run's output dir)")
    _expect((cfg.gdu.n_examples is None or cfg.gdu.n_examples > 0) and cfg.gdu.every >= 0,
            "gdu.n_examples must be > 0 (or null for the original's numbers of examples) "
            "and gdu.every >= 0")
    b = cfg.gdu.betas
    if b is not None:
        _expect(isinstance(b, list) and len(b) >= 1
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in b),
                f"gdu.betas={b!r} must list betas > 0 for the GDU study (e.g. [0.4,0.2,0.1,0.05]), or be null")
    for name in cfg.gdu.estimators or []:
        _expect(name in EP_ESTIMATORS, f"gdu.estimators has {name!r}; the GDU study compares the EP estimators "
                f"{list(EP_ESTIMATORS)} (against BPTT, its reference)")
        if name in WITH_POINTS:
            problem = ESTIMATORS[name].config_problem(cfg)
            _expect(problem is None, f"gdu.estimators has {name}: {problem}")
