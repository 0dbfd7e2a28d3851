"""One federated round, from what it reads to its judged candidate: the one driver every caller uses.

The operations layer (:mod:`aivo_fl.operations.aggregation`: registry and model store) and the
simulations (:class:`aivo_fl.ml.simulation.server.SimulatedServer`: in memory) both run a round
through :func:`run_round`, then persist it in their own way; so a benchmark measures the product's
round.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import numpy as np

from aivo_fl.ml.round.backtrack import MAX_HALVINGS, Backtracked
from aivo_fl.ml.round.candidate import RoundResult, RoundState, build_candidate
from aivo_fl.ml.round.judge import Judging, judge_round
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions

# What the server judges a round's candidates with, given the round (the operations layer judges on
# the drawn learners' held-out data, so it needs to know who was drawn).
JudgingFor = Callable[[RoundResult], Judging]


def run_round(
    state: RoundState,
    options: RoundOptions,
    privacy: PrivacySettings,
    judging_for: JudgingFor,
    now: datetime,
    rng: np.random.Generator,
    halvings: int = MAX_HALVINGS,
) -> Backtracked:
    """Build the candidate (gather, account, aggregate, server step), then judge it (anchor, gate,
    backtracking). Raises what :func:`~aivo_fl.ml.round.candidate.build_candidate` raises."""
    result = build_candidate(state, options, privacy, now, rng)
    return judge_round(result, state, judging_for(result), options.anchor, halvings, rng)
