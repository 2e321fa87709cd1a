"""Gradient estimators: (model, x, y, dynamics) -> parameter gradients of the batch loss."""
from eqprop.estimators.base import Dynamics, Estimate
from eqprop.estimators.bptt import BPTT
from eqprop.estimators.ep import EPEstimator
from eqprop.estimators.one_sided import OneSided
from eqprop.estimators.random_sign import RandomSign
from eqprop.estimators.symmetric import Symmetric

ESTIMATORS = {"one_sided": OneSided, "random_sign": RandomSign, "symmetric": Symmetric, "bptt": BPTT}
EP_ESTIMATORS = ("one_sided", "random_sign", "symmetric")


def build_estimator(name: str, beta: float):
    if name not in ESTIMATORS:
        raise ValueError(f"estimator.name={name!r} is not known; expected one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[name](beta)
