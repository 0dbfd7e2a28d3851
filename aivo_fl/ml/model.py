"""The curriculum model: a shared trunk plus one small linear head per target."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aivo_fl.ml.data import HEAD_CLASSES, NUM_FEATURES, Samples

TRUNK_PREFIX = "trunk."
HEAD_PREFIX = "heads."
HIDDEN_SIZES: tuple[int, int] = (352, 112)  # ~131k parameters in total


class CurriculumNet(nn.Module):
    def __init__(self, hidden: tuple[int, int] = HIDDEN_SIZES) -> None:
        super().__init__()
        h1, h2 = hidden
        self.trunk = nn.Sequential(
            nn.Linear(NUM_FEATURES, h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(h2, k) for name, k in HEAD_CLASSES.items()})

    def fused_logits(self, x: Tensor) -> Tensor:
        """All heads' logits concatenated along dim 1 in HEAD_CLASSES order.

        One matmul instead of one per head: on CPU with small batches the per-op overhead, not
        the FLOPs, is what costs time. The heads stay separate modules, so parameter counts and
        state-dict keys remain honest.
        """
        heads = [self.heads[name] for name in HEAD_CLASSES]
        weight = torch.cat([h.weight for h in heads])
        bias = torch.cat([h.bias for h in heads])
        return F.linear(self.trunk(x), weight, bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return split_logits(self.fused_logits(x))


def split_logits(fused: Tensor) -> dict[str, Tensor]:
    parts = torch.split(fused, list(HEAD_CLASSES.values()), dim=1)
    return dict(zip(HEAD_CLASSES, parts, strict=True))


def build_model(seed: int = 0) -> CurriculumNet:
    """Deterministic initialisation without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CurriculumNet()


@dataclass(frozen=True)
class ArchitectureSummary:
    total_layers: int
    frozen_layers: int
    trainable_layers: int
    total_params: int
    frozen_params: int
    trainable_params: int


def _param_layers(module: nn.Module, prefix: str) -> dict[str, int]:
    """Modules that directly own parameters -> their parameter count."""
    layers: dict[str, int] = {}
    for name, sub in module.named_modules(prefix=prefix.rstrip(".")):
        own = sum(p.numel() for p in sub.parameters(recurse=False))
        if own:
            layers[name] = own
    return layers


def trunk_layer_names(model: CurriculumNet) -> list[str]:
    return list(_param_layers(model.trunk, TRUNK_PREFIX))


def head_layer_names(model: CurriculumNet) -> list[str]:
    return list(_param_layers(model.heads, HEAD_PREFIX))


def architecture_summary(model: CurriculumNet) -> ArchitectureSummary:
    """Counted from the module itself; the trunk is what clones freeze."""
    frozen = _param_layers(model.trunk, TRUNK_PREFIX)
    trainable = _param_layers(model.heads, HEAD_PREFIX)
    total = _param_layers(model, "")
    return ArchitectureSummary(
        total_layers=len(total),
        frozen_layers=len(frozen),
        trainable_layers=len(trainable),
        total_params=sum(total.values()),
        frozen_params=sum(frozen.values()),
        trainable_params=sum(trainable.values()),
    )


def freeze_trunk(model: CurriculumNet) -> None:
    for p in model.trunk.parameters():
        p.requires_grad_(False)


def head_state(model: CurriculumNet) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().numpy().astype(np.float32, copy=True)
        for k, v in model.state_dict().items()
        if k.startswith(HEAD_PREFIX)
    }


def trunk_state(model: CurriculumNet) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().numpy().astype(np.float32, copy=True)
        for k, v in model.state_dict().items()
        if k.startswith(TRUNK_PREFIX)
    }


def load_head_state(model: CurriculumNet, heads: dict[str, np.ndarray]) -> None:
    """Replace the heads' weights; refuses partial, extra or mis-shaped tensors."""
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIX)}
    missing = sorted(set(expected) - set(heads))
    extra = sorted(set(heads) - set(expected))
    if missing or extra:
        raise ValueError(f"head state mismatch: missing={missing} unexpected={extra}")
    with torch.no_grad():
        for key, target in expected.items():
            value = np.asarray(heads[key])
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"head tensor {key!r} has shape {value.shape}, expected {tuple(target.shape)}")
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
