"""The search space of a hyper-parameter search (`+search=<name>`, conf/search/*.yaml), checked before any trial.

A search file lists its dimensions under hydra.sweeper.params, one per config key:

    optimizer.lrs.0: {type: float, low: 1.0e-3, high: 0.5, log: true}   # float: uniform, or log-uniform
    dynamics.T1:     {type: int, low: 10, high: 60}                     # int: optional step, or log
    estimator:       {type: categorical, choices: [one_sided, symmetric]}

`<list key>.<i>` dimensions (optimizer.lrs.0, .1, ...) make one list override, optimizer.lrs=[...], so a
search over layer-wise learning rates needs no per-layer keys in the model config. On the command line,
Hydra's sweep syntax adds or replaces a dimension (`'estimator.beta=interval(0.1,0.9)'`,
`'optimizer.lr=tag(log,interval(1e-3,1))'`, `estimator=choice(one_sided,symmetric)`, `'dynamics.T1=range(10,60,10)'`)
and a plain value fixes that key for every trial, taking it out of the space.
"""
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

TYPES = ("float", "int", "categorical")
KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
        "categorical": {"type", "choices"}}
_LIST_ITEM = re.compile(r"^(?P<key>.+)\.(?P<index>\d+)$")


class SearchConfigError(ValueError):
    """A search that cannot run (its space or its settings); the message names the key and the fix."""


def _number(where: str, name: str, value: Any, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SearchConfigError(f"{where}: {name}={value!r} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise SearchConfigError(f"{where}: {name}={value!r} must be a number") from None
    if not math.isfinite(number):
        raise SearchConfigError(f"{where}: {name}={value!r} must be finite")
    if integer and number != int(number):
        raise SearchConfigError(f"{where}: {name}={value!r} must be an integer (type: int); use type: float")
    return int(number) if integer else number


def distribution(where: str, spec: Any) -> BaseDistribution:
    """One dimension from its entry (`where` names it in errors), or a SearchConfigError saying what is wrong."""
    if not isinstance(spec, dict):
        raise SearchConfigError(f"{where}: expected a mapping like {{type: float, low: 0.01, high: 1.0, log: true}}, "
                               f"got {spec!r}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise SearchConfigError(f"{where}: unknown distribution type {kind!r}; use one of {', '.join(TYPES)} "
                               "(log scale: type: float, log: true)")
    unknown = sorted(set(spec) - KEYS[kind])
    if unknown:
        raise SearchConfigError(f"{where}: {', '.join(unknown)} not allowed for type: {kind}; "
                               f"its keys are {', '.join(sorted(KEYS[kind]))}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise SearchConfigError(f"{where}: type: categorical needs a non-empty list of choices")
        if any(not isinstance(c, (str, int, float, bool, type(None))) for c in choices):
            raise SearchConfigError(f"{where}: categorical choices must be numbers, strings, booleans or null")
        return CategoricalDistribution(list(choices))
    integer = kind == "int"
    for key in ("low", "high"):
        if key not in spec:
            raise SearchConfigError(f"{where}: type: {kind} needs low and high")
    low, high = (_number(where, k, spec[k], integer) for k in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SearchConfigError(f"{where}: log={log!r} must be true or false")
    if low >= high:
        raise SearchConfigError(f"{where}: low={low} must be below high={high}")
    if log and low <= 0:
        raise SearchConfigError(f"{where}: log: true needs low > 0 (got low={low}); "
                               "drop log for a uniform range that includes 0")
    step = spec.get("step")
    if step is not None:
        step = _number(where, "step", step, integer)
        if log:
            raise SearchConfigError(f"{where}: step and log: true cannot be combined")
        if step <= 0:
            raise SearchConfigError(f"{where}: step={step} must be positive")
    if integer:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(low, high, log=log, step=step)


def _from_sweep_override(override) -> BaseDistribution:
    """A command-line dimension in Hydra's sweep syntax: choice(...), range(...) (ints, or floats with a float
    step), interval(...) (floats; tag(log, interval(...)) for log scale)."""
    from hydra.core.override_parser.types import Transformer

    where = f"command line {override.input_line}"
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        return distribution(where, {"type": "categorical", "choices": choices})
    value = override.value()
    if override.is_range_sweep():
        integer = all(isinstance(v, int) for v in (value.start, value.stop, value.step))
        # range's stop is excluded; the distribution's high is included
        last = value.start + value.step * math.ceil((value.stop - value.start) / value.step - 1)
        return distribution(where, {"type": "int" if integer else "float", "low": value.start, "high": last,
                                    "step": value.step})
    if override.is_interval_sweep():
        return distribution(where, {"type": "float", "low": value.start, "high": value.end,
                                    "log": "log" in value.tags})
    raise SearchConfigError(f"{where} is not a search dimension; use choice(...), range(...), interval(...) or "
                            "tag(log, interval(...))")


@dataclass
class SearchSpace:
    """The dimensions to sample and the overrides every trial shares."""

    dims: Dict[str, BaseDistribution]
    fixed: List[str]

    def overrides(self, params: Dict[str, Any]) -> List[str]:
        """A trial's sampled values as Hydra overrides: `<key>.<i>` values become one list."""
        lists: Dict[str, Dict[int, Any]] = {}
        out = []
        for name, value in params.items():
            m = _LIST_ITEM.match(name)
            if m and self._is_list(m.group("key")):
                lists.setdefault(m.group("key"), {})[int(m.group("index"))] = value
            else:
                out.append(f"{name}={_format(value)}")
        for key, items in lists.items():
            out.append(f"{key}=[{','.join(_format(items[i]) for i in sorted(items))}]")
        return out + list(self.fixed)

    def _is_list(self, key: str) -> bool:
        return f"{key}.0" in self.dims

    def check_lists(self) -> None:
        """`key.0, key.1, ...` must be complete: a gap would shift every later layer's value."""
        indices: Dict[str, List[int]] = {}
        for name in self.dims:
            m = _LIST_ITEM.match(name)
            if m:
                indices.setdefault(m.group("key"), []).append(int(m.group("index")))
        for key, idx in indices.items():
            if sorted(idx) != list(range(len(idx))):
                raise SearchConfigError(f"hydra.sweeper.params: {key}.<i> dimensions must be numbered 0..n-1 "
                                       f"(one per list item), got {', '.join(f'{key}.{i}' for i in sorted(idx))}")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def build(params: Optional[Dict[str, Any]], arguments: Sequence[str], config_loader=None) -> SearchSpace:
    """The space of the search file's params and the command line; SearchConfigError if it cannot run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    dims = {str(name): distribution(f"hydra.sweeper.params.{name}", spec) for name, spec in (params or {}).items()}
    fixed, fixed_keys = [], set()
    for override in OverridesParser.create(config_loader=config_loader).parse_overrides(list(arguments)):
        key = override.key_or_group
        if override.is_sweep_override():
            if override.is_hydra_override() or key.startswith("hydra."):
                raise SearchConfigError(f"{override.input_line}: hydra keys cannot be searched")
            dims[key] = _from_sweep_override(override)
        else:
            fixed.append(override.input_line)
            fixed_keys.add(key)
    # a key fixed on the command line leaves the space (all items of a list key with it)
    for name in list(dims):
        m = _LIST_ITEM.match(name)
        if name in fixed_keys or (m and m.group("key") in fixed_keys):
            del dims[name]
    space = SearchSpace(dims=dims, fixed=fixed)
    space.check_lists()
    if not dims:
        raise SearchConfigError("the search has no dimension left to sample: hydra.sweeper.params is empty, or the "
                               "command line fixed every one of its keys")
    return space


def example_params(space: SearchSpace) -> Dict[str, Any]:
    """One point of the space (each dimension's low end, or first choice): to compose a trial before any runs."""
    point = {}
    for name, d in space.dims.items():
        point[name] = d.choices[0] if isinstance(d, CategoricalDistribution) else d.low
    return point


def describe(space: SearchSpace) -> Dict[str, str]:
    """The space as JSON strings, stored with the study so that a resumed search can be checked against it."""
    from optuna.distributions import distribution_to_json

    return {name: distribution_to_json(d) for name, d in sorted(space.dims.items())}

