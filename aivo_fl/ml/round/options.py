"""The knobs of one federated round. These are the defaults: CLI, Dagster config and resources
read theirs from here (round shape) or from :class:`aivo_fl.config.Settings` (environment)."""

from __future__ import annotations

from dataclasses import dataclass

from aivo_fl.ml.aggregation.server_optimizers import Sgd
from aivo_fl.ml.aggregation.strategies import TRIM_FRACTION, FedAvg
from aivo_fl.ml.privacy.mechanism import DEFAULT_DELTA, DEFAULT_SAMPLE_CAP

# Heads deltas from a few local epochs have L2 norms around 0.1-5; a norm of 1000 can only be a
# corrupted or malicious file, and would swamp every non-robust strategy.
DEFAULT_MAX_DELTA_NORM = 1e3
# Robust strategies hold a (learners x block) float64 matrix; the block is sized to this budget.
DEFAULT_BLOCK_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class AnchorOptions:
    """The server's anchoring of each candidate to the curriculum it trained the main model on
    (:mod:`aivo_fl.ml.round.anchor`): ``epochs`` of plain SGD over ``samples`` curriculum
    training samples drawn afresh each round. A fixed count, so the pull per round (steps x rate)
    does not grow with the curriculum the server holds. Defaults chosen by ``fl_quality``."""

    samples: int = 2_400
    epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 0.005

    def __post_init__(self) -> None:
        if self.samples < 1 or self.epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError("curriculum anchor: need samples, epochs, batch_size >= 1 and learning_rate > 0")


@dataclass(frozen=True)
class RoundOptions:
    strategy: str = FedAvg.name
    min_learners: int = 3
    max_stale_days: int = 7
    # FedAvg with a server learning rate (sgd 6, Reddi et al. 2021's eta_g): the fl_quality
    # benchmark's choice over FedAdam 0.02 once learners send step-normalized fits from the main
    # model (aivo_fl.ml.training.batched.train_personal_and_update).
    server_optimizer: str = Sgd.name
    # None: the optimizer's own default (sgd 6; sgd 1.0 is plain model averaging; adam 0.02).
    learning_rate: float | None = None
    # None: the candidate is judged as the server step left it. On by default: fl_quality measured
    # it (it is what keeps a larger server step inside the curriculum guard).
    anchor: AnchorOptions | None = AnchorOptions()
    dry_run: bool = False
    max_delta_norm: float = DEFAULT_MAX_DELTA_NORM
    trim_fraction: float = TRIM_FRACTION
    block_bytes: int = DEFAULT_BLOCK_BYTES


@dataclass(frozen=True)
class PrivacySettings:
    """DP-FedAvg knobs; see :mod:`aivo_fl.ml.privacy.mechanism` for the mechanism, :mod:`aivo_fl.ml.round.accounting`
    for the draw and the accounting.

    Each eligible learner joins a round with probability ``sample_rate``; the released average is
    divided by the fixed expected cohort ``sample_rate x eligible learners``. With
    ``clip_target_quantile`` set (``CLIP_NORM=auto``), ``clip_norm`` is only the first round's clip
    norm; later rounds follow that quantile of the update norms (Andrew et al. 2021).
    """

    enabled: bool
    noise_multiplier: float
    clip_norm: float
    delta: float = DEFAULT_DELTA
    epsilon_budget: float | None = None  # global: refuse the round past it
    learner_epsilon_budget: float | None = None  # per learner: exclude them past it
    sample_cap: int = DEFAULT_SAMPLE_CAP
    sample_rate: float = 1.0
    clip_target_quantile: float | None = None
    # Set: ``noise_multiplier`` and ``sample_rate`` are the planner's for this epsilon over
    # ``target_rounds`` rounds at the round's population (:func:`aivo_fl.ml.round.accounting.planned_settings`).
    target_epsilon: float | None = None
    target_rounds: int = 52
