"""The `estimator` config group: its schema (conf/estimator/*.yaml extend it) and the checks of its own
values. An estimator's rules about the rest of the run (its `config_problem`) are eqprop.config.validate's."""
from dataclasses import dataclass
from typing import Optional

from eqprop.errors import expect, positive
from eqprop.estimators import EP_ESTIMATORS, ESTIMATORS


@dataclass
class EstimatorConfig:
    name: str = "symmetric"                  # one_sided | random_sign | symmetric | n_point | holomorphic | cep | bptt
    beta: float = 0.5                        # nudging strength (the original --betas 0.0 <beta>); bptt: GDU check only
    points: Optional[int] = None             # n_point / holomorphic: nudged phases (null: 4); others ignore it
    third_phase: bool = False                # cep: then T2 steps back at beta 0 and T2 updating steps at -beta
    random_sign: bool = False                # cep: the sign of beta drawn per batch

    def check(self) -> None:
        expect(self.name in ESTIMATORS,
               f"estimator.name={self.name!r} is not known; expected one of {sorted(ESTIMATORS)}")
        if self.name in EP_ESTIMATORS:
            expect(positive(self.beta),
                   f"estimator.beta={self.beta!r} must be > 0 for estimator={self.name} (the nudging strength; "
                   "the sign is set by the estimator)")
        expect(self.name == "cep" or not (self.third_phase or self.random_sign),
               f"estimator.third_phase / estimator.random_sign are options of estimator=cep, not of "
               f"estimator={self.name} (use estimator=symmetric or estimator=random_sign for those)")
