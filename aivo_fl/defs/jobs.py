"""Asset jobs: what sensors, schedules and the command line launch."""

from __future__ import annotations

import dagster as dg

from aivo_fl.defs.assets.curriculum import curriculum_dataset
from aivo_fl.defs.assets.federated import federated_main_model
from aivo_fl.defs.assets.learners import learner_models, learner_training
from aivo_fl.defs.assets.main_model import main_model

# dagster.yaml limits runs carrying this tag to one at a time (the asset's pool guards the step too).
AGGREGATION_RUN_TAG = "aivo/aggregation"

train_main_model_job = dg.define_asset_job(
    "train_main_model", selection=dg.AssetSelection.assets(curriculum_dataset, main_model)
)
clone_learners_job = dg.define_asset_job("clone_learners", selection=dg.AssetSelection.assets(learner_models))
train_learners_job = dg.define_asset_job("train_learners", selection=dg.AssetSelection.assets(learner_training))
federated_aggregation_job = dg.define_asset_job(
    "federated_aggregation",
    selection=dg.AssetSelection.assets(federated_main_model),
    tags={AGGREGATION_RUN_TAG: "true"},
)
