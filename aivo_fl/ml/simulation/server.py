"""The server side of a simulation: the main model's lineage as the registry and the model store
keep it, in memory, and its rounds run by the product's driver (:func:`aivo_fl.ml.round.run.run_round`)."""

from __future__ import annotations

import bisect
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from aivo_fl.ml.aggregation.base import Delta
from aivo_fl.ml.aggregation.server_optimizers import State
from aivo_fl.ml.model import CurriculumNet, head_state
from aivo_fl.ml.round.accounting import PrivacyHistory
from aivo_fl.ml.round.backtrack import MAX_HALVINGS, Backtracked
from aivo_fl.ml.round.candidate import RoundResult, RoundState
from aivo_fl.ml.round.gate import CONTRIBUTORS, EvaluationSet, Tolerances
from aivo_fl.ml.round.gather import LearnerUpdate
from aivo_fl.ml.round.judge import Judging
from aivo_fl.ml.round.options import PrivacySettings, RoundOptions
from aivo_fl.ml.round.run import run_round
from aivo_fl.ml.samples import Samples
from aivo_fl.ml.simulation.faults import WeekFaults, with_faults
from aivo_fl.ml.store.artifacts import next_version, save_main_model

FIRST_VERSION = "1.0.0"


@dataclass
class SimulatedServer:
    """Versions, privacy ledger and server-optimizer state, in memory. With ``main_root``, every
    promoted version is also saved there (learners that clone and train from files read it)."""

    trained: CurriculumNet  # the trained version the lineage starts from: the curriculum guard's reference
    curriculum_train: Samples  # the split the main model was fitted on: the anchor's data
    curriculum_val: Samples  # the split the gate guards
    main_root: Path | None = None
    active: CurriculumNet = field(init=False)
    versions: list[str] = field(default_factory=lambda: [FIRST_VERSION])
    promoted_at: list[datetime] = field(default_factory=lambda: [datetime.min.replace(tzinfo=UTC)])
    _uploads_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)
    privacy: PrivacyHistory = field(default_factory=PrivacyHistory)
    optimizer_state: State = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.active = self.trained
        if self.main_root is not None:
            save_main_model(self.main_root, FIRST_VERSION, self.trained, {}, 0)

    @property
    def version(self) -> str:
        return self.versions[-1]

    def version_at(self, when: datetime) -> str:
        """The version that was active at ``when`` (what a learner training then started from)."""
        return self.versions[bisect.bisect_right(self.promoted_at, when) - 1]

    def _uploads(self) -> Path:
        """Where this server's broken uploads are written (removed with the server)."""
        if self._uploads_dir is None:
            self._uploads_dir = tempfile.TemporaryDirectory(prefix="aivo-sim-uploads-")
        return Path(self._uploads_dir.name)

    def round(
        self,
        offered: Sequence[LearnerUpdate],
        heldout: Mapping[str, Samples],
        options: RoundOptions,
        privacy: PrivacySettings,
        now: datetime,
        rng: np.random.Generator,
        *,
        tolerances: Tolerances | None = None,
        halvings: int = MAX_HALVINGS,
        in_memory: Mapping[str, Delta] | None = None,
        learners_root: Path = Path("."),
        faults: WeekFaults | None = None,
    ) -> Backtracked:
        """One round over ``offered`` (their deltas ``in_memory``, or files under ``learners_root``), judged
        as the product judges it: on the drawn learners' ``heldout`` interactions (learner id -> samples)
        and the curriculum. Its privacy is recorded, a passing candidate promoted. ``faults`` (in-memory
        rounds): the week's late updates and broken uploads, left to the round to refuse."""
        if faults is not None:
            if in_memory is None:
                raise ValueError("faults apply to in-memory deltas")
            learners_root = self._uploads()
            offered, in_memory = with_faults(offered, in_memory, faults, self.version_at, learners_root)
        state = RoundState(
            self.version,
            head_state(self.active),
            list(self.versions),
            offered,
            learners_root,
            self.privacy,
            self.optimizer_state,
            in_memory=in_memory,
        )

        def judging(result: RoundResult) -> Judging:
            drawn = [heldout[c.learner_id] for c in result.included if c.learner_id in heldout]
            evaluation = EvaluationSet({CONTRIBUTORS: drawn}, self.curriculum_val)
            return Judging(self.active, self.trained, evaluation, self.curriculum_train, tolerances or Tolerances())

        judged = run_round(state, options, privacy, judging, now, rng, halvings)
        record = judged.result.privacy_record
        if record is not None:  # released whatever the gate says
            charged = [c.learner_id for c in judged.result.contributions if c.charged]
            self.privacy = self.privacy.after(record, charged)
        if judged.verdict.accepted:
            self._promote(judged, now)
        return judged

    def _promote(self, judged: Backtracked, now: datetime) -> None:
        version = next_version(self.version)
        if self.main_root is not None:
            metrics = {"heldout_accuracy": judged.verdict.heldout_accuracy_after}
            save_main_model(self.main_root, version, judged.candidate, metrics, 0, parent_version=self.version)
        self.versions.append(version)
        self.promoted_at.append(now)
        self.active, self.optimizer_state = judged.candidate, judged.result.optimizer_state
