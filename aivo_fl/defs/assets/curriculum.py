"""The synthetic curriculum the main model learns from."""

import dagster as dg

from aivo_fl.defs.readable import percent
from aivo_fl.defs.resources import ModelStoreResource, ReporterResource, TrainingSettingsResource
from aivo_fl.defs.retries import fail_fast_unless_transient
from aivo_fl.ml.samples import HEAD_CLASSES
from aivo_fl.operations.main_model import build_curriculum_dataset


@dg.asset(group_name="curriculum", kinds={"numpy"})
def curriculum_dataset(
    context: dg.AssetExecutionContext,
    model_store: ModelStoreResource,
    training_settings: TrainingSettingsResource,
    reporter: ReporterResource,
) -> dg.MaterializeResult:
    """Seeded synthetic curriculum samples: 256 features, a label per head, known Bayes ceiling."""
    with fail_fast_unless_transient():
        summary = build_curriculum_dataset(
            model_store.get_store(),
            training_settings.curriculum_samples,
            training_settings.data_seed,
            reporter.for_context(context),
        )
    return dg.MaterializeResult(
        metadata={
            "rows": summary.rows,
            "seed": summary.seed,
            "path": dg.MetadataValue.path(str(summary.path)),
            "class_balance_pct": dg.MetadataValue.json(
                {head: [percent(p) for p in shares] for head, shares in summary.class_balance.items()}
            ),
            **{f"bayes_ceiling_{head}_pct": percent(summary.bayes_ceiling[head]) for head in HEAD_CLASSES},
        }
    )
