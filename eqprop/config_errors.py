"""What Hydra's composition refuses (a wrong type, an unknown key), said in eqprop's words: the key, the
bad value, what is expected, and the key that was probably meant.

Hydra checks the YAML files and the command line against the schemas of eqprop.config while it
composes, before any eqprop code runs, and would answer with OmegaConf's wording and exit code 1.
`refuse_what_does_not_compose` composes once beforehand and turns such a refusal into eqprop's message
and exit code 2; `explain` is the rewording, also used by eqprop.config.from_dict.
"""
import dataclasses
import difflib
import re
import sys
import typing
from typing import Any, Optional, Sequence

from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_HYDRA_FLAGS_WE_CHECK = ("-m", "--multirun")


def _describe(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union:
        return " or ".join([_describe(a) for a in args] + ["null"])
    if typing.get_origin(tp) in (list, typing.List):
        return f"a list of {_KINDS[args[0]].split(' ', 1)[1]}s" if args[0] in (int, float, str) else "a list"
    return _KINDS.get(tp, getattr(tp, "__name__", str(tp)))


def _field(schema, parts):
    """(the dataclass that holds the last of `parts`, that field's type or None when it has no such field)"""
    for part in parts[:-1]:
        hints = typing.get_type_hints(schema)
        schema = hints.get(part)
        schema = next((a for a in typing.get_args(schema) if dataclasses.is_dataclass(a)), schema)
        if not dataclasses.is_dataclass(schema):
            return None, None
    return schema, typing.get_type_hints(schema).get(parts[-1])


def _shown(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def _plain_overrides(overrides: Sequence[str]) -> dict:
    """override as typed -> (key, value, whether it adds the key with +), for those that set one value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - a syntax error is Hydra's to report
        return {}
    return {line: (o.key_or_group, o.value(), o.is_add()) for line, o in zip(overrides, parsed)
            if not o.is_sweep_override() and not o.is_delete()}


def _cause(err: BaseException) -> Optional[OmegaConfBaseException]:
    while err is not None and not isinstance(err, OmegaConfBaseException):
        err = err.__cause__ or err.__context__  # Hydra raises some of its errors inside `except`, unchained
    return err


def explain(err: BaseException, schema: type, overrides: Sequence[str] = ()) -> Optional[str]:
    """eqprop's message for a config that does not fit `schema`, or None when `err` is not about that.
    An unknown key gets it with or without `+`: Hydra's own advice for `model.chanels=8`, to add the key
    with `+model.chanels=8`, only leads to a second refusal, since every group's schema is closed."""
    cause = _cause(err)
    if cause is None or not getattr(cause, "full_key", None):
        return None
    key = re.sub(r"\[\d+\]$", "", cause.full_key)   # a list element: talk about the whole list
    parts = key.split(".")
    holder, tp = _field(schema, parts)
    given = {k: (v, add) for k, v, add in _plain_overrides(overrides).values()}
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and holder is not None and tp is None:
        known = [f.name for f in dataclasses.fields(holder)]
        where = key[: -len(parts[-1])]
        close = difflib.get_close_matches(parts[-1], known, n=1)
        hint = f"; did you mean {where}{close[0]}?" if close else f"; known keys: {', '.join(sorted(known))}"
        return f"unknown config key {key}{hint}"
    if isinstance(cause, ValidationError) and tp is not None:
        value = given[key][0] if key in given else getattr(cause, "value", None)
        return f"{key}={_shown(value)} must be {_describe(tp)}"
    return None


def refuse_what_does_not_compose(config_dir: str, config_name: str, args: Sequence[str], schema: Any) -> None:
    """Compose the command line's config once; exit 2 with eqprop's message where Hydra would refuse it
    for a wrong type or an unknown key. Anything else is left to Hydra, which composes again."""
    if any(a.startswith("-") and a not in _HYDRA_FLAGS_WE_CHECK for a in args):
        return  # --help, --cfg, -cn ...: Hydra's own business
    from hydra import compose, initialize_config_dir

    overrides = [a for a in args if a not in _HYDRA_FLAGS_WE_CHECK]
    plain = list(_plain_overrides(overrides))  # a sweep's values are composed job by job, by Hydra
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            compose(config_name=config_name, overrides=plain)
    except Exception as err:  # noqa: BLE001 - what is not ours, Hydra reports when it composes
        msg = explain(err, schema, plain)
        if msg is not None:
            print(f"[eqprop] error: {msg}", file=sys.stderr, flush=True)
            sys.exit(2)
