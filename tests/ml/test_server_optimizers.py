"""Server optimizers against two steps worked out by hand (Reddi et al. 2021's update rules)."""

from __future__ import annotations

import numpy as np
import pytest

from aivo_fl.ml.aggregation.server_optimizers import Adam, Momentum, Sgd, server_optimizer

P0 = {"w": np.array([1.0, -2.0])}
U1 = {"w": np.array([0.2, 0.4])}
U2 = {"w": np.array([-0.2, 0.0])}


def _two_steps(optimizer: Sgd | Momentum | Adam) -> tuple[dict, dict, dict]:
    p1, s1 = optimizer.step(P0, U1, {})
    p2, s2 = optimizer.step(p1, U2, s1)
    return p1, p2, s2


def test_sgd_adds_the_scaled_update_and_keeps_no_state() -> None:
    p1, p2, state = _two_steps(Sgd(0.5))
    np.testing.assert_allclose(p1["w"], [1.1, -1.8], rtol=1e-12)  # 1 + 0.5*0.2, -2 + 0.5*0.4
    np.testing.assert_allclose(p2["w"], [1.0, -1.8], rtol=1e-12)  # 1.1 - 0.5*0.2
    assert state == {}


def test_momentum_accumulates_the_updates() -> None:
    p1, p2, state = _two_steps(Momentum(0.5, 0.9))
    np.testing.assert_allclose(p1["w"], [1.1, -1.8], rtol=1e-12)  # m1 = u1
    # m2 = 0.9 * [0.2, 0.4] + [-0.2, 0] = [-0.02, 0.36]; p2 = p1 + 0.5 * m2
    np.testing.assert_allclose(state["m.w"], [-0.02, 0.36], rtol=1e-12)
    np.testing.assert_allclose(p2["w"], [1.09, -1.62], rtol=1e-12)


def test_adam_normalises_each_coordinate() -> None:
    p1, p2, state = _two_steps(Adam(0.1, 0.9, 0.99, 0.01))
    # m1 = 0.1 u1 = [0.02, 0.04]; v1 = 0.01 u1^2 = [4e-4, 1.6e-3]; sqrt(v1) = [0.02, 0.04]
    # p1 = p0 + 0.1 * [0.02 / 0.03, 0.04 / 0.05] = [1.0666667, -1.92]
    np.testing.assert_allclose(p1["w"], [1 + 0.1 * 0.02 / 0.03, -1.92], rtol=1e-12)
    # m2 = 0.9 m1 + 0.1 u2 = [-0.002, 0.036]; v2 = 0.99 v1 + 0.01 u2^2 = [7.96e-4, 1.584e-3]
    np.testing.assert_allclose(state["m.w"], [-0.002, 0.036], rtol=1e-9)
    np.testing.assert_allclose(state["v.w"], [7.96e-4, 1.584e-3], rtol=1e-9)
    # p2 = p1 + 0.1 * m2 / (sqrt(v2) + 0.01) = [1.0614329, -1.8477101]
    np.testing.assert_allclose(p2["w"], [1.0614329, -1.8477101], rtol=1e-6)


def test_state_is_not_mutated_and_a_mismatched_slot_starts_fresh() -> None:
    state = {"m.w": np.array([1.0, 1.0])}
    Momentum(0.5, 0.9).step(P0, U1, state)
    np.testing.assert_array_equal(state["m.w"], [1.0, 1.0])
    fresh, _ = Momentum(0.5, 0.9).step(P0, U1, {"m.w": np.zeros(3)})  # heads changed shape: no carry-over
    np.testing.assert_allclose(fresh["w"], [1.1, -1.8], rtol=1e-12)


def test_names_defaults_and_bad_values() -> None:
    assert server_optimizer("sgd") == Sgd(6.0)  # FedAvg with a server rate, the product's round
    assert server_optimizer("sgd", 1.0) == Sgd(1.0)  # plain FedAvg: the new model is the learners' average
    assert server_optimizer("adam", 0.05) == Adam(learning_rate=0.05)
    assert server_optimizer("momentum").learning_rate == pytest.approx(1 - Momentum().beta)
    with pytest.raises(ValueError, match="Unknown server optimizer 'lamb'; valid: sgd, momentum, adam"):
        server_optimizer("lamb")
    for bad in (lambda: Sgd(0.0), lambda: Momentum(0.1, 1.0), lambda: Adam(0.1, tau=0.0)):
        with pytest.raises(ValueError):
            bad()
