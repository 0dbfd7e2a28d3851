"""An aggregation round against the real registry and store: crashes, leases, bad files, dry runs."""

from __future__ import annotations

import pytest

from aivo_fl.ml.federated_round import NoEligibleLearners, RoundOptions
from aivo_fl.operations.aggregation import run_federated_aggregation
from aivo_fl.registry import AggregationInProgress
from aivo_fl.registry.schema import ModelVersionStatus
from tests.app_side import contribution_reasons
from tests.operations.conftest import LEARNERS, PRIVACY, Cohort, quiet


def aggregate(cohort: Cohort, **options: object):  # type: ignore[no-untyped-def]
    return run_federated_aggregation(
        cohort.registry,
        cohort.store,
        PRIVACY,
        RoundOptions(**options),
        report=quiet,  # type: ignore[arg-type]
    )


def test_a_crash_between_writing_weights_and_registering_leaves_the_old_version(
    cohort: Cohort, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_: object, **__: object) -> None:
        raise RuntimeError("power cut")

    with monkeypatch.context() as patch:
        patch.setattr(cohort.registry, "record_federated_update", crash)
        with pytest.raises(RuntimeError, match="power cut"):
            aggregate(cohort)
    # The registry never saw the round: 1.0.0 is still active, complete and loadable.
    assert cohort.registry.get_active_version().version == "1.0.0"
    assert cohort.registry.get_federated_updates() == []
    assert cohort.registry.round_privacy_records() == []
    orphan = cohort.store.main_root / "1.1.0"
    assert orphan.is_dir()  # written whole (atomic rename), just never registered
    # The lease was released, and the orphan's number is never reused.
    outcome = aggregate(cohort)
    assert outcome.candidate_version == "1.2.0"
    assert cohort.registry.get_active_version().version == ("1.2.0" if outcome.promoted else "1.0.0")


def test_a_round_started_elsewhere_holds_the_lease(cohort: Cohort) -> None:
    with cohort.registry.aggregation_lock("cli-on-another-host"):
        with pytest.raises(AggregationInProgress, match="cli-on-another-host"):
            aggregate(cohort)
        aggregate(cohort, dry_run=True)  # a dry run reads only and needs no lease
    assert cohort.registry.get_federated_updates() == []


def test_corrupt_delta_files_are_excluded_with_their_reason_and_the_round_goes_on(cohort: Cohort) -> None:
    flipped = cohort.store.learner_dir(cohort.learners[1]) / "delta.safetensors"
    broken = {
        cohort.learners[0]: b"",  # truncated to nothing
        cohort.learners[1]: flipped.read_bytes()[:-1] + bytes([flipped.read_bytes()[-1] ^ 1]),  # one bit flipped
    }
    for learner_id, content in broken.items():
        (cohort.store.learner_dir(learner_id) / "delta.safetensors").write_bytes(content)
    (cohort.store.learner_dir(cohort.learners[2]) / "delta.safetensors").unlink()
    outcome = aggregate(cohort)
    excluded = outcome.summary()["excludedLearners"]
    assert set(excluded) == {cohort.learners[0], cohort.learners[1], cohort.learners[2]}
    assert excluded[cohort.learners[2]].startswith("missing file")
    assert excluded[cohort.learners[0]] == "truncated"
    assert excluded[cohort.learners[1]] == "hash mismatch"
    assert len(outcome.round.included) == LEARNERS - 3
    [update] = cohort.registry.get_federated_updates()
    recorded = contribution_reasons(cohort.registry, update["updateId"])
    assert {k for k, v in recorded.items() if v} == set(excluded)


def test_dry_run_writes_nothing_and_a_spent_window_has_no_eligible_learners(cohort: Cohort) -> None:
    before = sorted(p.name for p in cohort.store.main_root.iterdir())
    outcome = aggregate(cohort, dry_run=True)
    assert outcome.dry_run and outcome.update_id is None
    assert sorted(p.name for p in cohort.store.main_root.iterdir()) == before
    assert cohort.registry.get_federated_updates() == []
    assert [v.status for v in cohort.registry.list_main_versions()] == [ModelVersionStatus.ACTIVE]

    aggregate(cohort)
    expected = rf"No eligible learners: 0 usable .* {LEARNERS} learner\(s\) who trained .* {LEARNERS} of them already"
    with pytest.raises(NoEligibleLearners, match=expected):
        aggregate(cohort)
