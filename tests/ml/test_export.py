"""Exported files reload to the same predictions (fp16/int8 via safetensors, ONNX via onnxruntime)."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from aivo_fl.cli.export_command import FORMATS
from aivo_fl.ml.model import evaluate
from aivo_fl.ml.samples import HEAD_CLASSES, NUM_FEATURES
from aivo_fl.ml.simulation.world import generate_curriculum
from aivo_fl.ml.store.artifacts import ArtifactError
from aivo_fl.ml.store.export import (
    EXPORT_FORMATS,
    METADATA_KEY,
    TOLERANCES,
    ExportError,
    check_export,
    export_model,
    exported_logits,
    fp32_size,
    load_exported_state,
    quantize_int8,
)

DESCRIPTION = {"learnerId": "learner-000001", "mainVersion": "1.2.0"}


@pytest.fixture(scope="module")
def heldout():
    return generate_curriculum(500, seed=9)


@pytest.fixture(scope="module")
def onnx_file(trained_small) -> bytes:
    model, _ = trained_small
    return export_model(model, "onnx", DESCRIPTION)


def test_cli_choices_are_the_export_formats() -> None:
    assert FORMATS == EXPORT_FORMATS


@pytest.mark.parametrize(("fmt", "max_ratio"), [("safetensors-fp16", 0.51), ("int8", 0.27)])
def test_safetensors_exports_round_trip_close_to_fp32(trained_small, heldout, fmt: str, max_ratio: float) -> None:
    model, _ = trained_small
    data = export_model(model, fmt, DESCRIPTION)
    assert len(data) <= max_ratio * fp32_size(model)
    state, description = load_exported_state(data)
    assert description | DESCRIPTION == description and description["encoding"] == fmt
    assert description["heads"] == HEAD_CLASSES and description["numFeatures"] == NUM_FEATURES
    reference = model.state_dict()
    for key, value in state.items():
        # Tolerance per element: fp16 keeps ~3 significant digits; int8 is within half a step of the row's scale.
        step = 1e-3 if fmt == "safetensors-fp16" else float(np.abs(reference[key].numpy()).max()) / 127
        np.testing.assert_allclose(value, reference[key].numpy(), rtol=1e-3, atol=step / 2 + 1e-6)
    check = check_export(model, data, fmt, heldout)
    assert check.max_abs_logit_error <= TOLERANCES[fmt]
    assert check.accuracy_fp32 == pytest.approx(evaluate(model, heldout)["difficulty"]["accuracy"])
    assert abs(check.accuracy_exported - check.accuracy_fp32) <= 0.01 and check.agreement >= 0.98


def test_int8_file_holds_int8_weights_and_one_scale_per_output_channel(trained_small) -> None:
    model, _ = trained_small
    tensors = st_load(export_model(model, "int8", DESCRIPTION))
    for key, value in model.state_dict().items():
        if value.ndim == 2:
            assert tensors[key].dtype == np.int8 and tensors[key].shape == tuple(value.shape)
            assert tensors[key + ".scale"].shape == (value.shape[0],)
            assert np.abs(tensors[key]).max() == 127  # the largest weight of some row uses the full range
        else:
            assert tensors[key].dtype == np.float32


def test_quantize_int8_is_symmetric_per_row_and_exact_on_the_grid() -> None:
    weight = np.array([[0.0, 0.0, 0.0], [1.27, -0.635, 0.01], [-2.54, 2.54, 0.02]], dtype=np.float32)
    q, scale = quantize_int8(weight)
    np.testing.assert_allclose(scale, [1.0, 0.01, 0.02])
    np.testing.assert_array_equal(q, [[0, 0, 0], [127, -64, 1], [-127, 127, 1]])
    assert np.abs(q * scale[:, None] - weight).max() <= scale.max() / 2
    # Denormal leftovers of weight decay: a step of 1e-45 / 127 underflows float32 to 0.
    q, scale = quantize_int8(np.array([[1e-45, -1e-44, 0.0]], dtype=np.float32))
    assert np.isfinite(scale).all() and scale[0] > 0 and not q.any()


def test_onnx_outputs_match_pytorch_through_onnxruntime(trained_small, heldout, onnx_file: bytes) -> None:
    model, _ = trained_small
    session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert [o.name for o in session.get_outputs()] == list(HEAD_CLASSES)
    for rows in (1, 37):  # the batch dimension is dynamic
        x = heldout.features[:rows].astype(np.float32)
        outputs = session.run(None, {"features": x})
        expected = model(torch.from_numpy(x))
        for head, out in zip(HEAD_CLASSES, outputs, strict=True):
            np.testing.assert_allclose(out, expected[head].detach().numpy(), atol=TOLERANCES["onnx"], rtol=0)
    check = check_export(model, onnx_file, "onnx", heldout)
    assert check.max_abs_logit_error <= TOLERANCES["onnx"] and check.agreement == 1.0
    props = {p.key: p.value for p in onnx.load_from_string(onnx_file).metadata_props}
    assert json.loads(props[METADATA_KEY])["mainVersion"] == "1.2.0"


def test_foreign_or_damaged_files_are_refused(trained_small, heldout, onnx_file: bytes) -> None:
    model, _ = trained_small
    good = export_model(model, "int8", DESCRIPTION)
    with pytest.raises(ArtifactError):
        load_exported_state(b"\x80\x04\x95 a pickle, not safetensors")
    with pytest.raises(ArtifactError):
        load_exported_state(good[: len(good) // 2])
    with pytest.raises(ExportError, match="no aivo-fl-export description"):
        load_exported_state(st_save({k: v.numpy() for k, v in model.state_dict().items()}))
    tensors = st_load(good)
    del tensors["trunk.11.bias"]
    with pytest.raises(ExportError, match="do not match the model architecture"):
        load_exported_state(st_save(tensors, metadata={METADATA_KEY: "{}"}))
    with pytest.raises(ExportError, match="cannot be run by onnxruntime"):
        exported_logits(onnx_file[:1000], "onnx", heldout.features[:2])


def test_a_file_that_drifted_from_the_model_is_not_handed_out(trained_small, heldout) -> None:
    model, _ = trained_small
    tensors = st_load(export_model(model, "int8", DESCRIPTION))
    tensors["heads.difficulty.weight.scale"] = tensors["heads.difficulty.weight.scale"] * 1.5
    drifted = st_save(tensors, metadata={METADATA_KEY: json.dumps(DESCRIPTION)})
    with pytest.raises(ExportError, match="int8 export differs from the model"):
        check_export(model, drifted, "int8", heldout)


def test_onnx_export_logs_nothing_below_errors(trained_small, caplog: pytest.LogCaptureFixture) -> None:
    model, _ = trained_small
    with caplog.at_level(logging.INFO):  # what the CLI shows
        export_model(model, "onnx", DESCRIPTION)
    assert [(r.name, r.getMessage()) for r in caplog.records if r.levelno < logging.ERROR] == []
