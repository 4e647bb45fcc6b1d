"""Optimisers: RMSProp with TensorFlow semantics, SGD with Nesterov momentum, AdamW; parameter
groups that keep weight decay off norm and bias parameters."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as ``tf.compat.v1.train.RMSPropOptimizer`` (used by the EfficientNet and
    EfficientNetV2 code, ``build_optimizer('rmsprop', decay=0.9, momentum=0.9, epsilon=0.001)``):

        ms  <- decay * ms + (1 - decay) * g^2          (ms starts at 1, TF's slot initialiser)
        mom <- momentum * mom + lr * g / sqrt(ms + eps) (eps *inside* the sqrt; lr inside mom)
        p   <- p - mom

    PyTorch's RMSprop differs on all three counts (ms starts at 0, eps outside the sqrt, lr applied
    after the momentum buffer), which matters with eps = 1e-3.  ``weight_decay`` is an L2 term
    (``g += wd * p``), as TF adds ``wd * sum(l2_loss(v))`` to the loss."""

    def __init__(self, params, lr: float = 0.01, decay: float = 0.9, momentum: float = 0.9,
                 eps: float = 1e-3, weight_decay: float = 0.0):
        if lr < 0 or not 0 <= decay < 1 or not 0 <= momentum < 1 or eps <= 0 or weight_decay < 0:
            raise ConfigError(f"bad RMSpropTF settings lr={lr} decay={decay} momentum={momentum} eps={eps}")
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, mom, eps, wd = (group[k] for k in ("lr", "decay", "momentum", "eps", "weight_decay"))
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                ms, buf = state["square_avg"], state["momentum_buffer"]
                ms.mul_(decay).addcmul_(g, g, value=1 - decay)
                update = g / (ms + eps).sqrt()
                if mom > 0:
                    buf.mul_(mom).add_(update, alpha=lr)
                    p.sub_(buf)
                else:
                    p.sub_(update, alpha=lr)
        return loss


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Two groups: weights with decay, and (unless ``decay_norm_and_bias``) the 1-d parameters -
    norm scales/shifts and biases - without (the EfficientNet TF code excludes BN variables from
    its L2 term; ResNet-RS likewise)."""
    if decay_norm_and_bias:
        return [dict(params=[p for p in model.parameters() if p.requires_grad], weight_decay=weight_decay)]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def build_optimizer(model: nn.Module, recipe, lr: float) -> torch.optim.Optimizer:
    if getattr(recipe, "layer_decay", 1.0) < 1.0:  # fine-tuning: layer-wise LR decay (groups carry lr_scale)
        from ..finetune import finetune_param_groups
        groups = finetune_param_groups(model, lr, recipe.layer_decay, recipe.weight_decay)
        for g in groups:
            g.pop("names", None)
    else:
        groups = param_groups(model, recipe.weight_decay, recipe.decay_norm_and_bias)
    if recipe.optimizer == "rmsprop":
        return RMSpropTF(groups, lr=lr, decay=recipe.rmsprop_decay, momentum=recipe.momentum, eps=recipe.opt_eps)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum,
                               nesterov=recipe.nesterov and recipe.momentum > 0)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(recipe.betas), eps=recipe.opt_eps)
    raise ConfigError(f"unknown optimizer {recipe.optimizer!r}")
