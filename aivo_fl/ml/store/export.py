"""A personalized model as one self-contained download: trunk + the learner's heads in one file.

Formats (`EXPORT_FORMATS`):
- `safetensors-fp16`: every tensor in float16 (half the fp32 size).
- `int8`: weight matrices quantized symmetrically per output channel (row): `q = round(w / s)` in
  [-127, 127] stored as int8 under the weight's own name, the float32 scales `s` (one per row)
  under `<name>.scale`; `w ~= q * s[:, None]`. Biases stay float32 (a few hundred numbers).
- `onnx`: the fp32 network as an ONNX graph (`torch.onnx.export`, the torch.export-based
  exporter), input `features` (batch x 256), one output per head, logits.

Each file carries its own description (`aivo-fl-export` metadata: learner, main version, encoding,
heads), so it is usable without the store. `check_export` re-reads the bytes (the safetensors
parser that refuses anything else; onnxruntime for ONNX) and compares the logits with the fp32
model; `TOLERANCES` is the largest absolute logit difference accepted per format.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save as st_save
from torch import Tensor, nn

from aivo_fl.ml.model import CurriculumNet, build_model, samples_to_tensors
from aivo_fl.ml.samples import HEAD_CLASSES, NUM_FEATURES, PRIMARY_HEAD, Samples
from aivo_fl.ml.store.artifacts import ArtifactError, decode_tensors

EXPORT_FORMATS = ("safetensors-fp16", "int8", "onnx")
SUFFIXES = {"safetensors-fp16": ".fp16.safetensors", "int8": ".int8.safetensors", "onnx": ".onnx"}
METADATA_KEY = "aivo-fl-export"
EXPORT_FORMAT_VERSION = 1
# Largest |logit difference| against the fp32 model accepted by `check_export`. Measured over 10
# fine-tuned learner clones (benchmarks/README.md): fp16 1.8e-3, int8 7.5e-2, onnx 2.4e-6.
TOLERANCES = {"safetensors-fp16": 0.02, "int8": 0.25, "onnx": 1e-4}
SCALE_SUFFIX = ".scale"
_PROBE_ROWS = 256
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")


class ExportError(ArtifactError):
    """An exported file cannot be read back, or does not reproduce the model within tolerance."""


@dataclass(frozen=True)
class ExportCheck:
    """How close the exported file's predictions are to the fp32 model's."""

    max_abs_logit_error: float  # over a fixed probe batch and the held-out samples
    tolerance: float
    heldout_samples: int
    accuracy_fp32: float | None  # primary head on the held-out samples (None without any)
    accuracy_exported: float | None
    agreement: float | None  # share of held-out samples where both predict the same class

    def to_json(self) -> dict[str, Any]:
        return {
            "maxAbsLogitError": self.max_abs_logit_error,
            "tolerance": self.tolerance,
            "heldoutSamples": self.heldout_samples,
            "accuracyFp32": self.accuracy_fp32,
            "accuracyExported": self.accuracy_exported,
            "agreement": self.agreement,
        }


def _fp32_state(model: CurriculumNet) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def quantize_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: the row's largest |w| maps to 127.

    A row whose step would not be a normal float32 (all zero, or only denormal leftovers of weight
    decay) gets scale 1 and quantizes to zeros, instead of dividing by an underflowed 0.
    """
    step = np.abs(weight).max(axis=1).astype(np.float64) / 127.0
    scale = np.where(step >= np.finfo(np.float32).tiny, step, 1.0).astype(np.float32)
    q = np.clip(np.rint(weight / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _encode_tensors(model: CurriculumNet, fmt: str) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for key, value in _fp32_state(model).items():
        if fmt == "safetensors-fp16":
            tensors[key] = value.astype(np.float16)
        elif value.ndim == 2:
            tensors[key], tensors[key + SCALE_SUFFIX] = quantize_int8(value)
        else:
            tensors[key] = value
    return tensors


class _HeadOutputs(nn.Module):
    """The model with one output per head, in HEAD_CLASSES order (what the ONNX graph exposes)."""

    def __init__(self, model: CurriculumNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        return torch.split(self.model.fused_logits(features), list(HEAD_CLASSES.values()), dim=1)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter and its optimizer log every pass ("Removed 7 unused nodes") and the torchvision
    ops they skip; an operator's command shows errors only."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _onnx_bytes(model: CurriculumNet, description: dict[str, str]) -> bytes:
    model.eval()
    example = (torch.zeros(2, NUM_FEATURES),)
    with _quiet_exporter():
        program = torch.onnx.export(
            _HeadOutputs(model),
            example,
            input_names=["features"],
            output_names=list(HEAD_CLASSES),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in description.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def export_model(model: CurriculumNet, fmt: str, description: dict[str, Any]) -> bytes:
    """The model as one file in `fmt`, with `description` (JSON-able) embedded as its metadata."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    embedded = {
        METADATA_KEY: json.dumps(
            {
                **description,
                "encoding": fmt,
                "formatVersion": EXPORT_FORMAT_VERSION,
                "numFeatures": NUM_FEATURES,
                "heads": dict(HEAD_CLASSES),
            },
            sort_keys=True,
        )
    }
    if fmt == "onnx":
        return _onnx_bytes(model, embedded)
    return st_save(_encode_tensors(model, fmt), metadata=embedded)


def _safetensors_description(data: bytes, origin: str) -> dict[str, Any]:
    (header_len,) = struct.unpack("<Q", data[:8])  # bounds already checked by decode_tensors
    try:
        header = json.loads(data[8 : 8 + header_len])
        return json.loads(header["__metadata__"][METADATA_KEY])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{origin}: no {METADATA_KEY} description in the file ({exc})") from None


def load_exported_state(data: bytes, origin: str = "export") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A safetensors export back as fp32 tensors (int8 dequantized) plus its embedded description."""
    tensors = decode_tensors(data, origin)
    description = _safetensors_description(data, origin)
    state: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(key + SCALE_SUFFIX)
        state[key] = value.astype(np.float32) if scale is None else value.astype(np.float32) * scale[:, None]
    expected = build_model().state_dict()
    if set(state) != set(expected) or any(state[k].shape != tuple(expected[k].shape) for k in expected):
        raise ExportError(f"{origin}: tensors do not match the model architecture")
    return state, description


def exported_logits(data: bytes, fmt: str, features: np.ndarray) -> np.ndarray:
    """Fused logits (HEAD_CLASSES order) of an exported file on `features`."""
    if fmt == "onnx":
        import onnxruntime  # heavy; only exports and their checks need it

        try:
            session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
            outputs = session.run(list(HEAD_CLASSES), {"features": features.astype(np.float32)})
        except Exception as exc:  # onnxruntime's own error types for malformed graphs
            raise ExportError(f"ONNX file cannot be run by onnxruntime ({exc})") from exc
        return np.concatenate(outputs, axis=1)
    state, _ = load_exported_state(data)
    model = build_model()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    model.eval()
    with torch.inference_mode():
        return model.fused_logits(torch.from_numpy(features.astype(np.float32))).numpy()


def check_export(model: CurriculumNet, data: bytes, fmt: str, heldout: Samples | None) -> ExportCheck:
    """Re-read `data` and compare with the fp32 model on a fixed probe batch and the held-out samples.

    Raises ExportError past the format's tolerance, so a bad file is never handed out.
    """
    probe = np.random.default_rng(0).standard_normal((_PROBE_ROWS, NUM_FEATURES)).astype(np.float32)
    n = 0 if heldout is None else len(heldout)
    features = probe if n == 0 else np.concatenate([probe, heldout.features.astype(np.float32)])
    model.eval()
    with torch.inference_mode():
        reference = model.fused_logits(torch.from_numpy(features)).numpy()
    exported = exported_logits(data, fmt, features)
    error = float(np.abs(exported - reference).max())
    if not error <= TOLERANCES[fmt]:
        raise ExportError(f"{fmt} export differs from the model by {error:.3g} in logits (> {TOLERANCES[fmt]})")
    accuracy_fp32 = accuracy_exported = agreement = None
    if n:
        width = HEAD_CLASSES[PRIMARY_HEAD]
        offset = sum(list(HEAD_CLASSES.values())[: list(HEAD_CLASSES).index(PRIMARY_HEAD)])
        ours = reference[_PROBE_ROWS:, offset : offset + width].argmax(axis=1)
        theirs = exported[_PROBE_ROWS:, offset : offset + width].argmax(axis=1)
        target = samples_to_tensors(heldout)[1][:, list(HEAD_CLASSES).index(PRIMARY_HEAD)].numpy()
        accuracy_fp32, accuracy_exported = float((ours == target).mean()), float((theirs == target).mean())
        agreement = float((ours == theirs).mean())
    return ExportCheck(error, TOLERANCES[fmt], n, accuracy_fp32, accuracy_exported, agreement)


def fp32_size(model: CurriculumNet) -> int:
    """Bytes of the same model as one fp32 safetensors file: the reference the formats are measured against."""
    return len(st_save(_fp32_state(model)))
