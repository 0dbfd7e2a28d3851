"""Asset jobs: what sensors, schedules and the command line launch."""

from __future__ import annotations

import dagster as dg

from aivo_fl.defs.assets.active_version import active_main_version
from aivo_fl.defs.assets.curriculum import curriculum_dataset
from aivo_fl.defs.assets.federated import federated_main_model
from aivo_fl.defs.assets.learners import learner_models, learner_training
from aivo_fl.defs.assets.main_model import main_model
from aivo_fl.defs.run_tags import RUN_TAG, RunKind

# dagster.yaml limits runs carrying this tag to one at a time (the asset's pool guards the step too).
AGGREGATION_RUN_TAG = "aivo/aggregation"
# Run monitoring (deploy/dagster.yaml) ends a learner run still going after this long: a run whose
# Celery worker died waits for a result that never comes, and the learners it left are asked for
# again. Two runs share at most every learner, ~5 minutes of training for 50,000 on one core.
LEARNER_RUN_MAX_SECONDS = 3600

train_main_model_job = dg.define_asset_job(
    "train_main_model",
    selection=dg.AssetSelection.assets(curriculum_dataset, main_model, active_main_version),
    tags={RUN_TAG: RunKind.MAIN_MODEL.value},
)
clone_learners_job = dg.define_asset_job(
    "clone_learners",
    selection=dg.AssetSelection.assets(learner_models),
    tags={RUN_TAG: RunKind.CLONING.value, dg.MAX_RUNTIME_SECONDS_TAG: str(LEARNER_RUN_MAX_SECONDS)},
)
train_learners_job = dg.define_asset_job(
    "train_learners",
    selection=dg.AssetSelection.assets(learner_training),
    tags={RUN_TAG: RunKind.TRAINING.value, dg.MAX_RUNTIME_SECONDS_TAG: str(LEARNER_RUN_MAX_SECONDS)},
)
federated_aggregation_job = dg.define_asset_job(
    "federated_aggregation",
    selection=dg.AssetSelection.assets(federated_main_model, active_main_version),
    tags={RUN_TAG: RunKind.ROUND.value, AGGREGATION_RUN_TAG: "true"},
)
