"""SGD with the backbone in its own parameter group, at `backbone_lr_mult` of the head's rate.

BUC and the methods built on it fine-tune a pretrained backbone more slowly than their new layers
and set the rate per epoch from a stage schedule; each group carries its multiplier, so a schedule
sets one base rate for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def backbone_head_sgd(
    model: nn.Module, backbone: nn.Module, config: Mapping[str, Any], backbone_prefix: str
) -> torch.optim.SGD:
    """SGD over `backbone` (rate x `backbone_lr_mult`) and every parameter of `model` whose name
    does not start with `backbone_prefix` (rate x 1); lr, momentum, weight decay and nesterov from
    `config`."""
    head = [p for n, p in model.named_parameters() if not n.startswith(backbone_prefix)]
    base = [p for p in backbone.parameters() if p.requires_grad]
    groups = [
        {"params": base, "lr_mult": float(config["backbone_lr_mult"])},
        {"params": head, "lr_mult": 1.0},
    ]
    return torch.optim.SGD(
        groups, lr=float(config["lr"]), momentum=float(config["sgd_momentum"]),
        weight_decay=float(config["weight_decay"]), nesterov=bool(config["nesterov"]),
    )


def set_base_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every group's rate to `lr` times its `lr_mult`; returns `lr`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr
