"""LoRA layers computed as one fused multiply-add: base(x) + s·(x·Aᵀ)·Bᵀ in a single `addmm`.

    python -c "from smoltune.train.fused_lora import fuse_lora_linears; help(fuse_lora_linears)"

PEFT computes `result + lora_B(lora_A(dropout(x))) * scaling`: besides the two small matmuls, a scaling
multiply and an addition over the whole (tokens x out_features) output, forward and backward, in each of the
210 adapted projections of SmolLM2. `addmm` folds both into the second matmul (and skips the multiply when
the scale is 1). Same parameters, same gradients; only the simple case is fused (one active adapter, no
dropout, no DoRA or other variant, no LoRA bias), every other case keeps PEFT's own forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


def _fusable(layer: Any) -> bool:
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(layer, LoraLinear) or len(layer.active_adapters) != 1:
        return False
    name = layer.active_adapters[0]
    return (
        name in layer.lora_A
        and name not in layer.lora_variant
        and isinstance(layer.lora_dropout[name], nn.Identity)
        and layer.lora_B[name].bias is None
        and not layer.fan_in_fan_out
    )


def fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Forward of a fusable PEFT LoRA Linear; falls back to PEFT when adapters are disabled or merged."""
    if self.disable_adapters or self.merged or args or kwargs:
        return type(self).forward(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    base = self.base_layer(x)
    rows, out = x.reshape(-1, x.shape[-1]), base.reshape(-1, base.shape[-1])
    if not torch.is_autocast_enabled(rows.device.type):
        # PEFT's rule: the adapter computes in its own dtype (fp32 adapters over a 16-bit base), the sum is cast
        # back. Under autocast every matmul here runs in the autocast dtype already, so no cast is spent.
        rows, out = rows.to(self.lora_A[name].weight.dtype), out.to(self.lora_A[name].weight.dtype)
    down = rows @ self.lora_A[name].weight.t()
    fused = torch.addmm(out, down, self.lora_B[name].weight.t(), alpha=self.scaling[name])
    return fused.view(base.shape).to(base.dtype)


def fuse_lora_linears(model: nn.Module) -> int:
    """Give every fusable LoRA Linear of `model` the fused forward; returns how many were fused."""
    fused = 0
    for module in model.modules():
        if _fusable(module):
            module.forward = types.MethodType(fused_forward, module)
            fused += 1
    return fused
