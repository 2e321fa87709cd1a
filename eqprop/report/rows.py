"""The report's rows: the runs of one task/model/loss, one row per estimator and per combination of
the settings that vary among them, so that only seeds are averaged over."""
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from eqprop.report.collect import RunRecord
from eqprop.runs import ESTIMATOR_ORDER, family

# settings that do not change what a run computes, or that are averaged over (seed)
NOT_A_SETTING = ("seed", "logger", "device", "resume", "load_path", "sweep", "experiment", "mode",
                 "task.data_dir", "task.download", "task.num_workers")


@dataclass
class Row:
    estimator: str
    label: str
    ok: List[RunRecord] = field(default_factory=list)
    failed: List[RunRecord] = field(default_factory=list)

    @property
    def family(self) -> str:
        return family(self.estimator)

    def column(self, key: str) -> List[float]:
        if key == "best":
            return [max(h["test_acc"] for h in r.history) for r in self.ok]
        return [r.history[-1]["test_acc"] for r in self.ok]

    def seconds_per_epoch(self) -> float:
        s = [h["seconds"] for r in self.ok for h in r.history if "seconds" in h]
        return statistics.fmean(s) if s else float("nan")

    def curve(self) -> Tuple[List[int], List[float], List[float]]:
        """Per epoch: mean and std of the test accuracy over the runs that reached it."""
        by_epoch: Dict[int, List[float]] = {}
        for r in self.ok:
            for h in r.history:
                by_epoch.setdefault(h["epoch"], []).append(h["test_acc"])
        epochs = sorted(by_epoch)
        return (epochs, [statistics.fmean(by_epoch[e]) for e in epochs],
                [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])


def _flat(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = str(v)
    return out


def _settings(run: RunRecord) -> dict:
    flat = _flat(run.config)
    keep = {k: v for k, v in flat.items()
            if not any(k == p or k.startswith(p + ".") for p in NOT_A_SETTING) and k != "estimator.name"}
    if run.get("estimator.name") == "bptt":
        keep.pop("estimator.beta", None)  # BPTT trains without beta
    return keep


def group_key(run: RunRecord) -> Tuple[str, str, str]:
    return tuple(str(run.get(f"{k}.name", "?")) for k in ("task", "model", "loss"))


def build_rows(runs: List[RunRecord]) -> List[Row]:
    """One row per estimator and per combination of the settings that vary inside the group, so
    seeds are only averaged over runs that are otherwise the same."""
    settings = {id(r): _settings(r) for r in runs}
    keys = sorted({k for s in settings.values() for k in s})
    # a key some runs lack (beta for BPTT) varies only if the runs that have it disagree
    varying = [k for k in keys if len({s[k] for s in settings.values() if k in s}) > 1]
    rows: Dict[tuple, Row] = {}
    for r in runs:
        est = str(r.get("estimator.name", "?"))
        extra = tuple((k, settings[id(r)][k]) for k in varying if k in settings[id(r)])
        label = est + (" (" + ", ".join(f"{k}={v}" for k, v in extra) + ")" if extra else "")
        row = rows.setdefault((est, extra), Row(est, label))
        (row.failed if r.problem else row.ok).append(r)
    order = {e: i for i, e in enumerate(ESTIMATOR_ORDER)}
    return sorted(rows.values(), key=lambda w: (order.get(w.estimator, len(order)), w.estimator, w.label))
