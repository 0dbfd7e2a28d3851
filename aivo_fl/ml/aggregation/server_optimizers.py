"""Server optimizers: how the main model moves along the strategy's aggregate, after the strategy.

After Reddi et al., "Adaptive Federated Optimization" (ICLR 2021): the aggregate delta (trained
heads minus main heads, averaged) is a pseudo-gradient pointing *downhill*, so every optimizer
adds it. ``Sgd(1.0)`` is plain FedAvg (the new main model is the average of the learners' models);
``Sgd``'s default rate 6 is FedAvg with a server learning rate, the product's round.
``Momentum`` is FedAvgM (Hsu et al. 2019), ``Adam`` is FedAdam (no bias correction, ``tau`` as the
adaptivity floor, as in the paper). The optimizer's state (momentum, moments) is a dict of float64
tensors the caller persists next to the main version it produced, so it survives restarts and a
rejected round does not advance it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from aivo_fl.ml.aggregation.base import Delta

State = dict[str, np.ndarray]


class ServerOptimizer(Protocol):
    name: str
    learning_rate: float

    def step(
        self, params: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray], state: State
    ) -> tuple[Delta, State]:
        """(new params in float64, new state); ``state`` is {} on the first round and never mutated."""
        ...


def _slot(state: State, key: str, like: np.ndarray) -> np.ndarray:
    # A missing or mismatched slot (first round, or the heads changed shape) starts from zero.
    value = state.get(key)
    return value if value is not None and value.shape == like.shape else np.zeros(like.shape, np.float64)


def _positive(name: str, value: float) -> None:
    if not (value > 0 and np.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value}")


def _decay(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


class _PerTensor:
    """The step every optimizer shares: per tensor, params + lr x direction, where ``_direction``
    turns the update and the tensor's old state slots (named by ``slots``) into (direction, new slots)."""

    slots: ClassVar[tuple[str, ...]] = ()
    learning_rate: float

    def _direction(self, u: np.ndarray, *old: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        raise NotImplementedError

    def step(
        self, params: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray], state: State
    ) -> tuple[Delta, State]:
        new, out = {}, {}
        for k, raw in update.items():
            u = np.asarray(raw, np.float64)
            direction, slots = self._direction(u, *(_slot(state, f"{s}.{k}", u) for s in self.slots))
            new[k] = np.asarray(params[k], np.float64) + self.learning_rate * direction
            out.update({f"{s}.{k}": value for s, value in zip(self.slots, slots, strict=True)})
        return new, out


@dataclass(frozen=True)
class Sgd(_PerTensor):
    """params + lr x update. No state.

    The default rate 6 is fl_quality's choice for the product's round: learners' updates are fits
    from the main model normalized to a few local steps (``train_personal_and_update``), small
    and consistent, so a plain step several times their average moves the main model as far per
    round as FedAdam did without moving every coordinate by the same amount (FedAdam's sign-like
    step spent the curriculum guard on coordinates the learners barely agree on). Rate 1 is plain
    model averaging, which stalls."""

    name: ClassVar[str] = "sgd"
    learning_rate: float = 6.0

    def __post_init__(self) -> None:
        _positive("server learning rate", self.learning_rate)

    def _direction(self, u: np.ndarray, *old: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        return u, ()


@dataclass(frozen=True)
class Momentum(_PerTensor):
    """FedAvgM: m = beta m + update; params + lr x m. With lr = 1 - beta a steady stream of equal
    updates moves the model as far per round as Sgd(1.0) would, with less round-to-round noise."""

    name: ClassVar[str] = "momentum"
    slots: ClassVar[tuple[str, ...]] = ("m",)
    learning_rate: float = 0.1
    beta: float = 0.9

    def __post_init__(self) -> None:
        _positive("server learning rate", self.learning_rate)
        _decay("momentum beta", self.beta)

    def _direction(self, u: np.ndarray, *old: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        m = self.beta * old[0] + u
        return m, (m,)


@dataclass(frozen=True)
class Adam(_PerTensor):
    """FedAdam: m = b1 m + (1 - b1) u; v = b2 v + (1 - b2) u^2; params + lr x m / (sqrt(v) + tau).

    Each coordinate moves by about ``learning_rate`` whatever the update's scale, so the rate is a
    step in weight units (Reddi et al.'s defaults: b1 0.9, b2 0.99, tau 1e-3). The rate 0.02 is
    fl_quality's choice for the product's round (with backtracking and the curriculum anchor)."""

    name: ClassVar[str] = "adam"
    slots: ClassVar[tuple[str, ...]] = ("m", "v")
    learning_rate: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _positive("server learning rate", self.learning_rate)
        _positive("Adam tau", self.tau)
        _decay("Adam beta1", self.beta1)
        _decay("Adam beta2", self.beta2)

    def _direction(self, u: np.ndarray, *old: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        m = self.beta1 * old[0] + (1.0 - self.beta1) * u
        v = self.beta2 * old[1] + (1.0 - self.beta2) * np.square(u)
        return m / (np.sqrt(v) + self.tau), (m, v)


SERVER_OPTIMIZERS: tuple[str, ...] = (Sgd.name, Momentum.name, Adam.name)


def server_optimizer(name: str, learning_rate: float | None = None) -> ServerOptimizer:
    """The optimizer called ``name``; ``learning_rate=None`` keeps its own default."""
    kinds: dict[str, type[Sgd] | type[Momentum] | type[Adam]] = {"sgd": Sgd, "momentum": Momentum, "adam": Adam}
    if name not in kinds:
        raise ValueError(f"Unknown server optimizer {name!r}; valid: {', '.join(SERVER_OPTIMIZERS)}")
    return kinds[name]() if learning_rate is None else kinds[name](learning_rate=learning_rate)
