"""Every composed config eqprop can be given, as JSON: to check that a refactor changes no value and no message.

Composes (Hydra, in-process) the defaults, every experiment preset, every sweep, every combination of the
task / model / estimator / loss / optimizer options, and each schema key set to a handful of odd values on a
few bases; each case becomes the checked RunConfig as a dict, or the error it raised (type and message).
Run it on two trees and diff the outputs:

    PYTHONPATH=/work/main python scripts/config_snapshot.py /work/main /tmp/before.json
    PYTHONPATH=$PWD       python scripts/config_snapshot.py $PWD /tmp/after.json
    python scripts/config_snapshot.py --diff /tmp/before.json /tmp/after.json
    (after the two paths, optional words: only the cases whose name holds one of them, e.g. optimizer.)
"""
import dataclasses
import itertools
import json
import sys
from pathlib import Path

ODD_VALUES = ["-1", "0", "2", "1.5", "nope", "null", "[]", "[0]", "[-1,2]", "[3,3]", "true"]
BASES = [[], ["model=cnn"], ["estimator=n_point"], ["model=vf_mlp", "loss=cel", "loss.softmax_readout=true"]]


def _options(conf: Path, group: str):
    return sorted(p.stem for p in (conf / group).glob("*.yaml") if p.stem != "schema")


def cases(root: Path):
    conf = root / "conf"
    yield "defaults", []
    for p in sorted((conf / "experiment").rglob("*.yaml")):
        name = p.relative_to(conf / "experiment").with_suffix("").as_posix()
        yield f"experiment {name}", [f"+experiment={name}"]
    for p in sorted((root / "sweeps" / "sweep").glob("*.yaml")):
        yield f"sweep {p.stem}", [f"+sweep={p.stem}"]
    groups = ["task", "model", "estimator", "loss", "optimizer", "logger"]
    for group in groups:
        for option in _options(conf, group):
            yield f"{group}={option}", [f"{group}={option}"]
    for combo in itertools.product(*(_options(conf, g) for g in groups[:5])):
        over = [f"{g}={o}" for g, o in zip(groups, combo)]
        yield " ".join(over), over
    from eqprop.config import RunConfig

    for f in dataclasses.fields(RunConfig):
        keys = ([f"{f.name}.{g.name}" for g in dataclasses.fields(f.default_factory)]
                if dataclasses.is_dataclass(f.default_factory) else [f.name])
        for key, value, base in itertools.product(keys, ODD_VALUES, BASES):
            over = base + [f"{key}={value}"]
            yield " ".join(over), over


def outcome(compose, over):
    from omegaconf import OmegaConf

    from eqprop.config import from_dict

    try:
        d = OmegaConf.to_container(compose(config_name="config", overrides=over), resolve=True)
    except Exception as err:  # noqa: BLE001 - the refusal is the outcome
        return f"compose {type(err).__name__}: {' '.join(str(err).split())}"
    try:
        return dataclasses.asdict(from_dict(d))
    except Exception as err:  # noqa: BLE001
        return f"from_dict {type(err).__name__}: {err}"


def snapshot(root: Path, out: Path, only=()):
    from hydra import compose, initialize_config_dir

    from omegaconf import OmegaConf

    import eqprop.config  # noqa: F401 - registers the schemas

    # conf/config.yaml's search path for +sweep=<name> (launch.py registers the same)
    OmegaConf.register_new_resolver("eqprop_root", lambda: str(root), replace=True)
    result = {}
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        for name, over in cases(root):
            if only and not any(part in name for part in only):
                continue
            result[name] = outcome(compose, over)
    out.write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    n_ok = sum(isinstance(v, dict) for v in result.values())
    print(f"{len(result)} cases: {n_ok} composed and validated, {len(result) - n_ok} refused -> {out}")


def diff(a: Path, b: Path) -> int:
    before, after = json.loads(a.read_text()), json.loads(b.read_text())
    if len(after) < len(before):  # a partial run: compare the cases it made
        before = {k: v for k, v in before.items() if k in after}
    changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    for k in changed:
        print(f"{k}:\n  before: {before.get(k)}\n  after:  {after.get(k)}")
    print(f"{len(before)} / {len(after)} cases, {len(changed)} differ")
    return 1 if changed else 0


if __name__ == "__main__":
    if sys.argv[1] == "--diff":
        sys.exit(diff(Path(sys.argv[2]), Path(sys.argv[3])))
    snapshot(Path(sys.argv[1]).resolve(), Path(sys.argv[2]), sys.argv[3:])  # then: only the cases naming one of these
