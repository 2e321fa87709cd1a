"""The error of a configuration that cannot run, and the small checks that raise it. Its own module so
that every config group's module can raise it without importing eqprop.config (which imports them)."""
import math


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


def expect(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


def non_negative(v: float) -> bool:
    return math.isfinite(v) and v >= 0
