"""Many learners' personal layers as one stack: grouped ``bmm`` forward, fused in-place SGD steps.

Every personal tensor carries a leading learner dimension. The forward pass runs each linear layer
as one batched matmul over the learners; autograd is asked only for the gradients of the linear
layers' *outputs* (and of the LayerNorm's small affine tensors), never for the weights. The weight
gradient of a linear layer is an outer product of its output gradient and its input, so the SGD
step with the proximal term,

    W <- W - lr * (dY^T X + mu * (W - W_main)) = (1 - lr mu) W - lr dY^T X + lr mu W_main,

is one in-place ``baddbmm_`` (gradient and update fused: the weight-sized gradient is never
written) plus one in-place add of the anchor. At the guide's depth each learner-step moves
~89,000 parameters, so the passes over them, not the FLOPs, are what a step costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aivo_fl.ml.model import HEAD_PREFIX, TRUNK_PREFIX, CurriculumNet
from aivo_fl.ml.samples import HEAD_CLASSES

FUSED_HEADS = "heads.fused.weight"  # the heads' weights concatenated along their output dimension


@dataclass(frozen=True)
class Op:
    """One personal layer: ``linear`` (weight, bias or None), ``relu``, or ``norm`` (weight, bias, eps)."""

    kind: str
    weight: str | None = None
    bias: str | None = None
    eps: float = 0.0


def personal_ops(model: CurriculumNet) -> list[Op]:
    """The personal layers bottom-up, the heads as one fused linear layer."""
    ops: list[Op] = []
    for i in range(model.frozen_layers, len(model.trunk)):
        module, name = model.trunk[i], f"{TRUNK_PREFIX}{i}"
        if isinstance(module, nn.Linear):
            ops.append(Op("linear", f"{name}.weight", f"{name}.bias" if module.bias is not None else None))
        elif isinstance(module, nn.ReLU):
            ops.append(Op("relu"))
        elif isinstance(module, nn.LayerNorm):
            ops.append(Op("norm", f"{name}.weight", f"{name}.bias", module.eps))
        else:
            raise TypeError(f"unsupported personal layer {type(module).__name__}")
    return [*ops, Op("linear", FUSED_HEADS)]


def _head_names() -> list[str]:
    return [f"{HEAD_PREFIX}{h}.weight" for h in HEAD_CLASSES]


def fuse_heads(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """``params`` with the heads' weights replaced by one contiguous fused tensor (dim -2 = classes)."""
    heads = _head_names()
    rest = {k: v.contiguous() for k, v in params.items() if k not in heads}
    return {**rest, FUSED_HEADS: torch.cat([params[k] for k in heads], dim=-2).contiguous()}


def split_heads(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`fuse_heads`."""
    parts = torch.split(params[FUSED_HEADS], list(HEAD_CLASSES.values()), dim=-2)
    rest = {k: v for k, v in params.items() if k != FUSED_HEADS}
    return {**rest, **dict(zip(_head_names(), parts, strict=True))}


@dataclass
class Forward:
    logits: Tensor  # (learners, batch, classes of all heads)
    inputs: list[Tensor]  # each linear layer's input
    outputs: list[Tensor]  # each linear layer's output (autograd is asked for their gradients)
    norm_params: dict[str, Tensor]  # the LayerNorms' affine tensors as autograd leaves


def forward(ops: list[Op], params: dict[str, Tensor], x: Tensor) -> Forward:
    """Run the personal layers for every learner at once; ``params`` rows = the learners of ``x``."""
    h, inputs, outputs, norm = x, [], [], {}
    for op in ops:
        if op.kind == "relu":
            h = torch.relu(h)
        elif op.kind == "norm":
            assert op.weight is not None and op.bias is not None
            w, b = (params[k].detach().requires_grad_(True) for k in (op.weight, op.bias))
            norm.update({op.weight: w, op.bias: b})
            h = F.layer_norm(h, h.shape[-1:], eps=op.eps) * w[:, None, :] + b[:, None, :]
        else:
            assert op.weight is not None
            weight = params[op.weight].transpose(1, 2)  # the bias add, if any, folded into the matmul
            y = torch.bmm(h, weight) if op.bias is None else torch.baddbmm(params[op.bias][:, None, :], h, weight)
            if not y.requires_grad:  # the first personal layer: its output is where the graph starts
                y.requires_grad_(True)
            inputs.append(h.detach())
            outputs.append(y)
            h = y
    return Forward(h, inputs, outputs, norm)


def sgd_step(
    ops: list[Op],
    params: dict[str, Tensor],
    anchor: dict[str, Tensor],
    run: Forward,
    loss: Tensor,
    lr: float,
    mu: float,
) -> None:
    """One proximal SGD step of ``params`` (rows = the learners of ``run``), in place."""
    grads = torch.autograd.grad(loss, [*run.outputs, *run.norm_params.values()])
    out_grads = grads[: len(run.outputs)]
    norm_grads = dict(zip(run.norm_params, grads[len(run.outputs) :], strict=True))
    linears = [op for op in ops if op.kind == "linear"]
    with torch.no_grad():
        for op, x, dy in zip(linears, run.inputs, out_grads, strict=True):
            assert op.weight is not None
            _update(params[op.weight], anchor[op.weight], lr, mu, product=(dy.transpose(1, 2), x))
            if op.bias is not None:
                _update(params[op.bias], anchor[op.bias], lr, mu, grad=dy.sum(dim=1))
        for name, g in norm_grads.items():
            _update(params[name], anchor[name], lr, mu, grad=g)


def _update(
    p: Tensor,
    anchor: Tensor,
    lr: float,
    mu: float,
    grad: Tensor | None = None,
    product: tuple[Tensor, Tensor] | None = None,
) -> None:
    """p <- (1 - lr mu) p - lr grad + lr mu anchor, the gradient given directly or as a batched product."""
    if product is not None:
        p.baddbmm_(*product, beta=1.0 - lr * mu, alpha=-lr)
    else:
        assert grad is not None
        if mu:
            p.mul_(1.0 - lr * mu)
        p.add_(grad, alpha=-lr)
    if mu:
        p.add_(anchor, alpha=lr * mu)  # the anchor broadcasts over the learners
