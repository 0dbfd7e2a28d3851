"""`aivo-fl export-learner-model`: a learner's personalized model as one file for the app."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aivo_fl.cli.registry_commands import open_registry
from aivo_fl.config import load_settings

FORMATS = ("safetensors-fp16", "int8", "onnx")  # = aivo_fl.ml.store.export.EXPORT_FORMATS, without importing torch


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "export-learner-model",
        help="write a learner's personalized model (main trunk + their heads) as one file, with a manifest",
    )
    p.add_argument("learner", metavar="LEARNER", help="the learner id")
    p.add_argument(
        "--format", choices=FORMATS, default="safetensors-fp16", help="file format (default safetensors-fp16)"
    )
    p.add_argument(
        "--output",
        metavar="PATH",
        help="a file, or a folder (existing or ending in /) for <learner>.<format> (default: this folder)",
    )
    p.set_defaults(func=cmd_export_learner_model)


def cmd_export_learner_model(args: argparse.Namespace) -> int:
    # torch (and onnx for that format) only when the command runs.
    from aivo_fl.operations.export import export_learner_model
    from aivo_fl.operations.store import ModelStore

    settings = load_settings()
    registry, store = open_registry(settings), ModelStore.from_settings(settings)
    output = Path(args.output) if args.output else None
    if output is not None and args.output.endswith(("/", os.sep)):
        output.mkdir(parents=True, exist_ok=True)
    # A refused id (4) or a damaged model file (1) is reported by `main` as one line.
    outcome = export_learner_model(registry, store, args.learner, args.format, output)
    m, check = outcome.manifest, outcome.manifest["check"]
    print(f"✓ Exported learner {m['learnerId']} (main version {m['mainVersion']}) as {m['format']}")
    print(f"  - File: {outcome.path} ({m['bytes']:,} bytes, {m['bytes'] / m['fp32Bytes']:.2f}x fp32)")
    print(f"  - SHA-256: {m['sha256']}")
    print(f"  - Max logit difference vs fp32: {check['maxAbsLogitError']:.2g} (tolerance {check['tolerance']:g})")
    if check["heldoutSamples"]:
        print(
            f"  - Held-out accuracy ({check['heldoutSamples']} interactions): "
            f"{check['accuracyFp32'] * 100:.2f}% fp32, {check['accuracyExported'] * 100:.2f}% exported"
        )
    print(f"  - Manifest: {outcome.manifest_path}")
    return 0
