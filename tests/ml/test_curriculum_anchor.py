"""Server-side anchoring: the candidate's personal layers pulled back toward the curriculum, the
frozen layers and the candidate itself untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from aivo_fl.ml.model import PERSONALIZATION_DEPTHS, evaluate, freeze_trunk, mean_loss
from aivo_fl.ml.round.anchor import anchor_to_curriculum
from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.training.local import LocalTrainingConfig
from aivo_fl.ml.training.main_model import split_curriculum

CONFIG = LocalTrainingConfig(epochs=1, batch_size=64, learning_rate=0.05, proximal_mu=0.0)


@pytest.mark.parametrize("depth", sorted(PERSONALIZATION_DEPTHS))
def test_anchoring_lowers_the_curriculum_loss_of_a_drifted_candidate_and_moves_only_personal_layers(
    trained_small: tuple, depth: str
) -> None:
    candidate = copy.deepcopy(trained_small[0])
    candidate.frozen_layers = PERSONALIZATION_DEPTHS[depth]
    freeze_trunk(candidate)
    with torch.no_grad():  # a round that drifted: every personal tensor pushed off the curriculum optimum
        generator = torch.Generator().manual_seed(0)
        for p in candidate.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    before = copy.deepcopy(candidate.state_dict())
    splits = split_curriculum(generate_curriculum(1_500, seed=5), 0.2, 0.0, 5)
    train, val = splits.train, splits.validation

    anchored = anchor_to_curriculum(candidate, train, CONFIG)

    assert mean_loss(evaluate(anchored, val)) < mean_loss(evaluate(candidate, val))
    trainable = {k for k, p in candidate.named_parameters() if p.requires_grad}
    for key, value in anchored.state_dict().items():
        torch.testing.assert_close(candidate.state_dict()[key], before[key], rtol=0, atol=0)  # not mutated
        assert torch.equal(value, before[key]) != (key in trainable), key  # only personal layers moved


def test_anchoring_refuses_an_empty_curriculum(trained_small: tuple) -> None:
    with pytest.raises(ValueError, match="curriculum samples"):
        anchor_to_curriculum(trained_small[0], generate_curriculum(0), CONFIG)
