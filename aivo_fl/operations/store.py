"""Where models and datasets live on disk."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aivo_fl.config import Settings
from aivo_fl.ml.samples import HEAD_CLASSES, Samples
from aivo_fl.ml.store.artifacts import write_file_atomic
from aivo_fl.ml.store.learner_ids import learner_dir


@dataclass(frozen=True)
class ModelStore:
    """The model store: main versions under `main_root/<version>/`, learners under `learners_root/<id>/`."""

    main_root: Path
    learners_root: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelStore:
        return cls(Path(settings.main_model_path), Path(settings.learner_models_path))

    @property
    def datasets_root(self) -> Path:
        return self.main_root.parent / "datasets"

    def curriculum_path(self, n_samples: int, seed: int) -> Path:
        return self.datasets_root / f"curriculum-n{n_samples}-seed{seed}.npz"

    def learner_dir(self, learner_id: str) -> Path:
        return learner_dir(self.learners_root, learner_id)


def save_samples(path: Path, samples: Samples) -> None:
    """Plain arrays in an .npz (no pickle), written atomically."""
    arrays = {"features": samples.features}
    for head in HEAD_CLASSES:
        arrays[f"target_{head}"] = samples.targets[head]
        arrays[f"bayes_{head}"] = samples.bayes_labels[head]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, buffer.getvalue())


def load_samples(path: Path) -> Samples:
    with np.load(path, allow_pickle=False) as data:
        return Samples(
            features=data["features"].astype(np.float32),
            targets={h: data[f"target_{h}"].astype(np.int64) for h in HEAD_CLASSES},
            bayes_labels={h: data[f"bayes_{h}"].astype(np.int64) for h in HEAD_CLASSES},
        )
