"""Gradient estimators: (model, x, y, dynamics) -> parameter gradients of the batch loss."""
from typing import Optional

from eqprop.estimators.base import Dynamics, Estimate
from eqprop.estimators.bptt import BPTT
from eqprop.estimators.ep import EPEstimator
from eqprop.estimators.holomorphic import Holomorphic
from eqprop.estimators.n_point import NPoint
from eqprop.estimators.one_sided import OneSided
from eqprop.estimators.random_sign import RandomSign
from eqprop.estimators.symmetric import Symmetric

ESTIMATORS = {"one_sided": OneSided, "random_sign": RandomSign, "symmetric": Symmetric, "n_point": NPoint,
              "holomorphic": Holomorphic, "bptt": BPTT}
EP_ESTIMATORS = ("one_sided", "random_sign", "symmetric", "n_point", "holomorphic")
WITH_POINTS = ("n_point", "holomorphic")  # the estimators that read estimator.points


def build_estimator(name: str, beta: float, points: Optional[int] = None):
    if name not in ESTIMATORS:
        raise ValueError(f"estimator.name={name!r} is not known; expected one of {sorted(ESTIMATORS)}")
    if name in WITH_POINTS:
        return ESTIMATORS[name](beta, points)
    return ESTIMATORS[name](beta)
