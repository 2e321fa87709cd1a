"""The `sweep` keys' schema: which sweep or search a multirun job belongs to (set by +sweep=<name>, read
back by the sweep summary and the reports)."""
from dataclasses import dataclass
from typing import Optional


@dataclass
class SweepConfig:
    name: str = ""                           # the sweeps/sweep/<name>.yaml (or conf/search/<name>.yaml) of a multirun job
    search: Optional[str] = None             # optuna: the job is a trial of a search (+search=<name>)
