"""Each round's report: rounds across time, this round marked, exclusions counted by reason, and
nothing a learner could be recognised by (no id, no statistic of their own data)."""

from __future__ import annotations

import base64
import io
import re
from datetime import UTC, datetime, timedelta

import numpy as np
from matplotlib.image import imread

from aivo_fl.ml.round.status import RoundStatus
from aivo_fl.operations.active_version import active_version
from aivo_fl.operations.round_report import build_round_report, reason_kind, round_points
from aivo_fl.registry import ContributionInput, FederatedUpdateInput, ModelRegistry

START = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
# Learners' own held-out accuracies: recorded in the registry, never released by a report.
LEARNER_ACCURACY = (0.4321, 0.4567)


def _round(
    base: str, new: str, status: RoundStatus, week: int, curriculum: tuple[float, float], epsilon: float | None
) -> FederatedUpdateInput:
    contributions = [ContributionInput(f"learner-secret-{i}", 0.5, 1.0, False, None) for i in range(2)]
    contributions += [
        ContributionInput("learner-stale-a", 0.0, None, False, "stale: trained 9 days ago"),
        ContributionInput("learner-stale-b", 0.0, None, False, "stale: trained 12 days ago"),
        ContributionInput("learner-out-c", 0.0, None, False, "not sampled this round", charged=True),
    ]
    return FederatedUpdateInput(
        base_version=base,
        new_version=new,
        status=status,
        rejection_reason=None if status == RoundStatus.PROMOTED else "Performance degradation: curriculum",
        strategy="fedavg",
        learning_rate=6.0,
        contributions=contributions,
        performance_improvement=2.46,
        accuracy_before=LEARNER_ACCURACY[0],
        accuracy_after=LEARNER_ACCURACY[1],
        dp_enabled=epsilon is not None,
        noise_multiplier=1.0 if epsilon is not None else None,
        clip_norm=1.0 if epsilon is not None else None,
        sample_rate=0.5,
        epsilon_round=epsilon,
        epsilon_total=None if epsilon is None else epsilon * week,
        privacy_delta=1e-5,
        metrics={
            "curriculumAccuracyBefore": curriculum[0],
            "curriculumAccuracyAfter": curriculum[1],
            "curriculumReference": 0.8967,
            "learnerEpsilons": {"learner-secret-0": 1.0},
        },
        aggregated_at=START + timedelta(weeks=week),
        new_version_path=f"models/main-aivo/{new}",
        new_version_metrics={"validationAccuracy": curriculum[1]},
    )


def _three_rounds(registry: ModelRegistry) -> list[str]:
    registry.register_main_version("1.0.0", "models/main-aivo/1.0.0", {"validationAccuracy": 0.8967})
    return [
        registry.record_federated_update(_round("1.0.0", "1.1.0", RoundStatus.PROMOTED, 1, (0.8967, 0.8912), 0.8)),
        registry.record_federated_update(_round("1.1.0", "1.2.0", RoundStatus.REJECTED, 2, (0.8912, 0.8101), 0.8)),
        registry.record_federated_update(_round("1.1.0", "1.3.0", RoundStatus.PROMOTED, 3, (0.8912, 0.8890), 0.8)),
    ]


def test_the_report_shows_the_rounds_so_far_and_counts_exclusions_by_reason(registry: ModelRegistry) -> None:
    ids = _three_rounds(registry)
    report = build_round_report(registry, ids[1])
    text = report.markdown
    assert text.startswith("### Round 2: rejected, 1.1.0 stays active (Performance degradation: curriculum)")
    assert "| curriculum validation accuracy | 89.12% -> 81.01% (trained version 89.67%) |" in text
    assert "| epsilon | 0.8 this round, worst-case learner epsilon 1.6 |" in text
    # Under DP neither who nor how many were drawn: only those left out before the draw, counted.
    assert "| learners | drawn: withheld (differential privacy), 2 left out before the draw |" in text
    # Stale by 9 and by 12 days are one reason; counts, no names.
    assert "| stale: trained N days ago | 2 |" in text and "not sampled" not in text
    for secret in ("learner-", "43.21", "45.67", "2.46", "learnerEpsilons"):
        assert secret not in text, secret
    # The picture is embedded as a PNG that decodes, about 900 x 330 pixels.
    embedded = re.search(r"!\[rounds 1 to 2\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert embedded is not None and base64.b64decode(embedded.group(1)) == report.png
    pixels = imread(io.BytesIO(report.png), format="png")
    assert pixels.shape[:2] == (330, 900) and np.ptp(pixels) > 0
    # A later round's report draws every round up to it, no further.
    assert "![rounds 1 to 3]" in build_round_report(registry, ids[2]).markdown


def test_the_curves_follow_the_serving_version_and_mark_each_candidate(registry: ModelRegistry) -> None:
    _three_rounds(registry)
    points = round_points(registry.round_summaries())
    assert [p.number for p in points] == [0, 1, 2, 3]
    # The rejected round's candidate scored 81.01%, but 1.1.0 kept serving at 89.12%.
    assert [p.serving for p in points] == [0.8967, 0.8912, 0.8912, 0.8890]
    assert [p.candidate for p in points] == [None, 0.8912, 0.8101, 0.8890]
    assert [p.epsilon_total for p in points] == [None, 0.8, 1.6, 2.4000000000000004]


def test_a_round_without_noise_says_it_has_no_guarantee(registry: ModelRegistry) -> None:
    registry.register_main_version("1.0.0", "models/main-aivo/1.0.0", {"validationAccuracy": 0.8967})
    update = registry.record_federated_update(_round("1.0.0", "1.1.0", RoundStatus.PROMOTED, 1, (0.89, 0.9), None))
    assert "| epsilon | no guarantee (released without noise) |" in build_round_report(registry, update).markdown


def test_reasons_are_grouped_by_kind() -> None:
    assert reason_kind("stale: trained 9 days ago") == reason_kind("stale: trained 12 days ago")
    assert reason_kind("source version 1.3.0 is newer than base 1.2.0") == "source version N is newer than base N"
    assert reason_kind("not sampled this round") == "not sampled this round"


def test_the_active_version_is_the_last_promotion_with_its_lineage(registry: ModelRegistry) -> None:
    ids = _three_rounds(registry)
    view = active_version(registry)
    assert [s.version for s in view.lineage] == ["1.0.0", "1.1.0", "1.3.0"]  # the rejected 1.2.0 is no ancestor
    assert [s.round_number for s in view.lineage] == [None, 1, 3]
    assert view.active.update_id == ids[2] and view.active.origin == "round 3"
    assert view.lineage[0].origin == "trained on the curriculum"
    assert view.active.curriculum_accuracy == 0.8890 and view.rounds_recorded == 3
    assert view.active.active_from is not None
    assert view.lineage[1].active_from <= view.active.active_from
