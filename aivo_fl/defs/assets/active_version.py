"""The main version that serves learners now: its own asset, so the UI shows it without opening a run.

Materialized after every training and every round (both jobs select it) and on demand from the
UI; each materialization reads the registry, so its metadata is the registry's truth at that moment.
"""

import dagster as dg

from aivo_fl.defs.assets.federated import federated_main_model
from aivo_fl.defs.assets.main_model import main_model
from aivo_fl.defs.readable import percent
from aivo_fl.defs.resources import RegistryResource
from aivo_fl.defs.retries import TRANSIENT_RETRY, fail_fast_unless_transient
from aivo_fl.operations.active_version import ActiveVersion, LineageStep, active_version


@dg.asset(
    group_name="main_model",
    deps=[main_model, federated_main_model],
    kinds={"python"},
    retry_policy=TRANSIENT_RETRY,
)
def active_main_version(registry: RegistryResource) -> dg.MaterializeResult:
    """The main version serving learners now (new learners are cloned from it, rounds build on it):
    since when, from which round, and the versions it descends from, read from the registry."""
    with fail_fast_unless_transient():
        view = active_version(registry.get_registry())
    return dg.MaterializeResult(metadata=_metadata(view), data_version=dg.DataVersion(view.active.version))


def _metadata(view: ActiveVersion) -> dict[str, object]:
    step = view.active
    parent = view.lineage[-2].version if len(view.lineage) > 1 else "-"
    metadata: dict[str, object] = {"version": step.version}
    if step.active_from is not None:
        metadata["serving_since"] = dg.MetadataValue.timestamp(step.active_from)
    metadata |= {
        "produced_by": step.origin + (f" ({step.update_id})" if step.update_id else ""),
        "base_version": parent,
    }
    if step.curriculum_accuracy is not None:
        metadata["curriculum_validation_accuracy_pct"] = percent(step.curriculum_accuracy)
    return metadata | {
        "rounds_recorded": view.rounds_recorded,
        "lineage": dg.MetadataValue.md(_lineage_table(view.lineage)),
    }


def _lineage_table(lineage: list[LineageStep]) -> str:
    rows = [
        "| version | serving from | produced by | curriculum validation accuracy |",
        "|---|---|---|---|",
    ]
    for i, step in enumerate(lineage):
        version = f"**{step.version}** (active)" if i == len(lineage) - 1 else step.version
        since = f"{step.active_from:%Y-%m-%d %H:%M} UTC" if step.active_from else "-"
        accuracy = f"{100 * step.curriculum_accuracy:.2f}%" if step.curriculum_accuracy is not None else "-"
        rows.append(f"| {version} | {since} | {step.origin} | {accuracy} |")
    return "\n".join(rows)
