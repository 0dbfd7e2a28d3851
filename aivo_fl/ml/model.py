"""The curriculum model: a shared trunk plus one small linear head per target."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aivo_fl.ml.samples import HEAD_CLASSES, NUM_FEATURES, Samples

TRUNK_PREFIX = "trunk."
HEAD_PREFIX = "heads."
# Layers frozen from the bottom, by personalization depth. "guide" is the activation guide's
# clone: 15 layers, 4 frozen (67,584 parameters), 11 trainable (89,344), so learners personalize
# the upper trunk too. "heads" trains only the output block: the final norm and the heads.
PERSONALIZATION_DEPTHS: dict[str, int] = {"heads": 11, "guide": 4}
DEFAULT_PERSONALIZATION_DEPTH = "heads"
DEFAULT_FROZEN_LAYERS = PERSONALIZATION_DEPTHS[DEFAULT_PERSONALIZATION_DEPTH]
# Trunk widths. The two bottom layers are bias-free (ReLU of a linear map of the centred features);
# the heads are bias-free too because the LayerNorm feeding them has a trainable shift that acts
# as their bias. Widths were chosen so the counts equal the guide's exactly.
TRUNK_WIDTHS: tuple[int, ...] = (176, 128, 176, 128, 176, 112)


def _trunk(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    fan_in = NUM_FEATURES
    for i, width in enumerate(widths):
        layers.append(nn.Linear(fan_in, width, bias=i >= 2))
        layers.append(nn.ReLU() if i < len(widths) - 1 else nn.LayerNorm(width))
        fan_in = width
    return nn.Sequential(*layers)


class CurriculumNet(nn.Module):
    """Trunk (12 layers) + one bias-free linear head per target; `frozen_layers` from the bottom."""

    def __init__(self, frozen_layers: int = DEFAULT_FROZEN_LAYERS) -> None:
        super().__init__()
        self.trunk = _trunk(TRUNK_WIDTHS)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(TRUNK_WIDTHS[-1], k, bias=False) for name, k in HEAD_CLASSES.items()}
        )
        if not 0 <= frozen_layers <= len(self.trunk):
            raise ValueError(f"frozen_layers must be in [0, {len(self.trunk)}], got {frozen_layers}")
        self.frozen_layers = frozen_layers

    def layer_names(self) -> list[str]:
        """Every layer bottom-up (leaf modules, activations and norms included, as Keras counts)."""
        trunk = [f"{TRUNK_PREFIX}{i}" for i in range(len(self.trunk))]
        return trunk + [f"{HEAD_PREFIX}{name}" for name in HEAD_CLASSES]

    def shared_features(self, x: Tensor) -> Tensor:
        """Output of the frozen bottom layers: computed once per sample, reused by local training."""
        return self.trunk[: self.frozen_layers](x)

    def fused_logits(self, x: Tensor, start: int = 0) -> Tensor:
        """All heads' logits concatenated along dim 1 in HEAD_CLASSES order.

        `start` > 0 runs the trunk from that layer on (x is then that layer's input, e.g.
        `shared_features`). One matmul for all heads: on CPU with small batches the per-op
        overhead, not the FLOPs, is what costs time. The heads stay separate modules, so
        parameter counts and state-dict keys remain honest.
        """
        weight = torch.cat([self.heads[name].weight for name in HEAD_CLASSES])
        return F.linear(self.trunk[start:](x), weight)

    def forward(self, x: Tensor, start: int = 0) -> dict[str, Tensor]:
        return split_logits(self.fused_logits(x, start))


def split_logits(fused: Tensor) -> dict[str, Tensor]:
    parts = torch.split(fused, list(HEAD_CLASSES.values()), dim=1)
    return dict(zip(HEAD_CLASSES, parts, strict=True))


def frozen_layers_for(depth: str) -> int:
    try:
        return PERSONALIZATION_DEPTHS[depth]
    except KeyError:
        known = sorted(PERSONALIZATION_DEPTHS)
        raise ValueError(f"unknown personalization depth {depth!r}; use one of {known}") from None


def build_model(seed: int = 0, frozen_layers: int = DEFAULT_FROZEN_LAYERS) -> CurriculumNet:
    """Deterministic initialisation without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CurriculumNet(frozen_layers)


@dataclass(frozen=True)
class ArchitectureSummary:
    total_layers: int
    frozen_layers: int
    trainable_layers: int
    total_params: int
    frozen_params: int
    trainable_params: int


def _layer_params(model: CurriculumNet) -> dict[str, int]:
    modules = dict(model.named_modules())
    return {name: sum(p.numel() for p in modules[name].parameters()) for name in model.layer_names()}


def trunk_layer_names(model: CurriculumNet) -> list[str]:
    """The frozen layers (bottom-up)."""
    return model.layer_names()[: model.frozen_layers]


def head_layer_names(model: CurriculumNet) -> list[str]:
    """The trainable (personal) layers."""
    return model.layer_names()[model.frozen_layers :]


def architecture_summary(model: CurriculumNet) -> ArchitectureSummary:
    """Counted from the module itself: the bottom `frozen_layers` layers are what clones freeze."""
    params = _layer_params(model)
    frozen = [params[n] for n in trunk_layer_names(model)]
    trainable = [params[n] for n in head_layer_names(model)]
    return ArchitectureSummary(
        total_layers=len(params),
        frozen_layers=len(frozen),
        trainable_layers=len(trainable),
        total_params=sum(params.values()),
        frozen_params=sum(frozen),
        trainable_params=sum(trainable),
    )


def is_personal(model: CurriculumNet, key: str) -> bool:
    """Whether a state-dict key belongs to the trainable (personal) layers."""
    return any(key.startswith(f"{layer}.") for layer in head_layer_names(model))


def freeze_trunk(model: CurriculumNet) -> None:
    """Freeze the bottom `frozen_layers` layers (the shared part of a clone)."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_personal(model, name))


def _state(model: CurriculumNet, personal: bool) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().numpy().astype(np.float32, copy=True)
        for k, v in model.state_dict().items()
        if is_personal(model, k) == personal
    }


def head_state(model: CurriculumNet) -> dict[str, np.ndarray]:
    """The personal tensors: what a clone stores and a delta contains (heads, or more at guide depth)."""
    return _state(model, personal=True)


def trunk_state(model: CurriculumNet) -> dict[str, np.ndarray]:
    """The frozen tensors, shared by every clone of a version."""
    return _state(model, personal=False)


def load_head_state(model: CurriculumNet, heads: dict[str, np.ndarray]) -> None:
    """Replace the personal tensors; refuses partial, extra or mis-shaped tensors."""
    expected = {k: v for k, v in model.state_dict().items() if is_personal(model, k)}
    missing = sorted(set(expected) - set(heads))
    extra = sorted(set(heads) - set(expected))
    if missing or extra:
        raise ValueError(f"personal state mismatch: missing={missing} unexpected={extra}")
    with torch.no_grad():
        for key, target in expected.items():
            value = np.asarray(heads[key])
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"tensor {key!r} has shape {value.shape}, expected {tuple(target.shape)}")
            target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def samples_to_tensors(samples: Samples) -> tuple[Tensor, Tensor]:
    """Features (n, 256) float32 and targets (n, heads) int64 in HEAD_CLASSES order."""
    x = torch.from_numpy(np.ascontiguousarray(samples.features, dtype=np.float32))
    y = torch.from_numpy(np.stack([samples.targets[h] for h in HEAD_CLASSES], axis=1).astype(np.int64))
    return x, y


def evaluate_tensors(model: CurriculumNet, x: Tensor, y: Tensor) -> dict[str, dict[str, float]]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = split_logits(model.fused_logits(x))
            out: dict[str, dict[str, float]] = {}
            for i, (head, lg) in enumerate(logits.items()):
                target = y[:, i]
                out[head] = {
                    "loss": float(F.cross_entropy(lg, target)),
                    "accuracy": float((lg.argmax(dim=1) == target).float().mean()),
                }
            return out
    finally:
        model.train(was_training)


def evaluate(model: CurriculumNet, samples: Samples) -> dict[str, dict[str, float]]:
    """Per head: mean cross-entropy and accuracy against the observed labels."""
    if len(samples) == 0:
        return {h: {"loss": float("nan"), "accuracy": float("nan")} for h in HEAD_CLASSES}
    x, y = samples_to_tensors(samples)
    return evaluate_tensors(model, x, y)


def mean_loss(metrics: dict[str, dict[str, float]]) -> float:
    return float(np.mean([m["loss"] for m in metrics.values()]))
