"""Which learners of some buckets need work: a clone, or local training on new interactions.

The registry's own queries, filtered by bucket here (the bucket is a hash of the id, so it is not
a column: the learner tables stay as the app defines them). Ids that could escape the model store
are set aside with their reason rather than failing a whole bucket.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from aivo_fl.ml.store.learner_buckets import bucket_of
from aivo_fl.ml.store.learner_ids import InvalidLearnerId, validate_learner_id
from aivo_fl.registry import ModelRegistry

# New interactions since the last session that make a learner worth retraining.
MIN_NEW_INTERACTIONS = 20
# Learners read per registry query while paging through those needing a model.
PAGE = 10_000


@dataclass
class Selection:
    learners: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # learner id -> why it is never handled


def valid_ids(learner_ids: Iterable[str]) -> Selection:
    """Split ids into those safe to use as folder names and those refused, with the reason."""
    selection = Selection()
    for learner_id in learner_ids:
        try:
            selection.learners.append(validate_learner_id(learner_id))
        except InvalidLearnerId as exc:
            selection.refused[learner_id] = str(exc)
    return selection


def needing_model(registry: ModelRegistry, buckets: Collection[int]) -> Selection:
    """Learners of these buckets with a completed baseline and no personalized model, in id order."""
    found: list[str] = []
    after = None
    while True:
        page = registry.learners_needing_model(after=after, limit=PAGE)
        found.extend(learner for learner in page if bucket_of(learner) in buckets)
        if len(page) < PAGE:
            return valid_ids(found)
        after = page[-1]


def ready_to_train(registry: ModelRegistry, buckets: Collection[int]) -> Selection:
    """Learners of these buckets with a model and MIN_NEW_INTERACTIONS+ interactions since their last session."""
    ready = registry.learners_with_new_interactions(MIN_NEW_INTERACTIONS)
    return valid_ids(learner for learner, _, _ in ready if bucket_of(learner) in buckets)
