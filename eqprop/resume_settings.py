"""The settings a continued run trains with: its own stored settings, changed only where this command
line explicitly says so (like the original code's --load-path, which took the run's hyper-parameters
from its saved file). Plain dicts in, plain dicts out: no torch, no Hydra state.
"""
import copy
from typing import Callable, Dict, Iterable, List, Set, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser

# what a command line may change without it being a change of the run's settings
QUIET = ("resume", "epochs")


def flat(d: dict, prefix: str = "") -> Dict[str, object]:
    """{"a.b": leaf}; lists are leaves."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def explicit_prefixes(overrides: List[str], choices: dict, composed: dict,
                      compose_without: Callable[[List[str]], dict]) -> Tuple[Set[str], List[str]]:
    """The dotted keys (or whole sections) that these command-line overrides set.

    `key=value` sets key; `group=option` sets the whole section (estimator=bptt: name and beta); a
    preset of the global package (`+experiment=...`, `+sweep=...`) sets the keys where the config
    composed with it differs from the one composed without it (compose_without). Also returns notes
    for the run's log (nothing is logged here: the command may still be refused)."""
    parsed = OverridesParser.create().parse_overrides([o for o in overrides])
    out: Set[str] = set()
    notes: List[str] = []
    global_presets = []
    for o, text in zip(parsed, overrides):
        key = o.key_or_group
        if key == "hydra" or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        if key in choices and not isinstance(composed.get(key), dict):
            global_presets.append(text)
        else:
            out.add(key.replace("/", "."))
    if global_presets:
        rest = [o for o in overrides if o not in global_presets]
        try:
            without = flat(compose_without(rest))
        except Exception as err:  # noqa: BLE001 - no Hydra to compose with: the preset sets all it could
            notes.append(f"cannot tell which keys {' '.join(global_presets)} sets ({type(err).__name__}: {err}); "
                         "every setting of this command line is taken")
            without = {}
        with_ = flat(composed)
        out |= {k for k in set(with_) | set(without) if with_.get(k, KeyError) != without.get(k, KeyError)}
    return out, notes


def _get(d: dict, dotted: str):
    node = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return KeyError
        node = node[part]
    return node


def _set(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = d
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if value is KeyError:
        node.pop(last, None)
    else:
        node[last] = copy.deepcopy(value)


def merge(stored: dict, composed: dict, explicit: Set[str]) -> Tuple[dict, Dict[str, Tuple[object, object]]]:
    """(effective settings, {key: (stored value, new value)} for every key that changed).

    Keys the stored config lacks (added to eqprop since the run started) come from the composed
    config, i.e. their defaults."""
    effective = copy.deepcopy(stored)
    for p in sorted(explicit, key=lambda k: k.count(".")):  # a section first, then keys inside it
        _set(effective, p, _get(composed, p))
    have = flat(effective)
    for k, v in flat(composed).items():
        if k not in have and not _under(k, have) and _get(effective, k) is KeyError:
            _set(effective, k, v)
    before, after = flat(stored), flat(effective)
    changes = {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
               if before.get(k, KeyError) != after.get(k, KeyError)}
    return effective, changes


def describe(changes: Dict[str, Tuple[object, object]]) -> List[str]:
    """One "changed: key old -> new" line per changed setting (epochs and resume= are not changes of
    the run's settings, and are said elsewhere)."""
    return [f"changed: {k} {old!r} -> {new!r}" for k, (old, new) in changes.items() if k not in QUIET]
