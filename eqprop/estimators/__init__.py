"""Gradient estimators: (model, x, y, dynamics) -> parameter gradients of the batch loss."""
from typing import Optional

from eqprop.estimators.base import Estimate
from eqprop.estimators.bptt import BPTT
from eqprop.estimators.cep import CEP
from eqprop.estimators.ep import EPEstimator
from eqprop.estimators.holomorphic import Holomorphic
from eqprop.estimators.n_point import NPoint
from eqprop.estimators.one_sided import OneSided
from eqprop.estimators.random_sign import RandomSign
from eqprop.estimators.symmetric import Symmetric

ESTIMATORS = {"one_sided": OneSided, "random_sign": RandomSign, "symmetric": Symmetric, "n_point": NPoint,
              "holomorphic": Holomorphic, "cep": CEP, "bptt": BPTT}
EP_ESTIMATORS = ("one_sided", "random_sign", "symmetric", "n_point", "holomorphic", "cep")
WITH_POINTS = ("n_point", "holomorphic")  # the estimators that read estimator.points


def build_estimator(name: str, beta: float, points: Optional[int] = None, third_phase: bool = False,
                    random_sign: bool = False):
    if name not in ESTIMATORS:
        raise ValueError(f"estimator.name={name!r} is not known; expected one of {sorted(ESTIMATORS)}")
    if name in WITH_POINTS:
        return ESTIMATORS[name](beta, points)
    if name == "cep":
        return CEP(beta, third_phase, random_sign)
    return ESTIMATORS[name](beta)
