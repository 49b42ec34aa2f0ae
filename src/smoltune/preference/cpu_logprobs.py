"""TRL's answer-token log-probabilities on a CPU.

TRL 1.15's DPOTrainer always projects hidden states through the LM head with its fused, chunked kernel
(`trl.kernels.ChunkedLogProbFunction`), whose inner loop is a Triton kernel: on a machine without a GPU driver
every DPO step fails with "0 active drivers". There is no setting to turn it off, so on a CPU `install()` puts
`TorchLogProbs` in its place: the same outputs (log-prob of the target, entropy, log of the sum of squared
probabilities, mean logit, whether the target is the top token) from plain torch ops, with autograd.

Cost model: it takes the same inputs as the kernel, the hidden states of the *answer positions only* (TRL
selects them), so the projection is answer tokens x vocabulary, not every position's: prompt tokens never reach
the LM head. Unlike the kernel it keeps the logits and the softmax for the backward pass (600 answer tokens x
49,152 fp32: about 118 MB each, some 4-5 such buffers at peak). tests/preference/test_cpu_logprobs.py
proves it equal to a log-softmax over full logits.
"""

from __future__ import annotations

from typing import Any

OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


class TorchLogProbs:
    """A drop-in for `ChunkedLogProbFunction.apply` (same positional arguments, same 5-tuple)."""

    @staticmethod
    def apply(
        hidden: Any,
        weight: Any,
        bias: Any,
        targets: Any,
        temperature: float,
        chunk_size: int,
        final_logit_softcapping: float | None = None,
        logit_scale: float = 1.0,
        outputs: tuple[str, ...] = OUTPUTS,
    ) -> tuple[Any, Any, Any, Any, Any]:
        import torch

        bias = bias.to(hidden.dtype) if bias is not None else None
        logits = torch.nn.functional.linear(hidden, weight.to(hidden.dtype), bias).float() * logit_scale
        if final_logit_softcapping is not None:
            logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
        logits = logits / temperature
        log_z = torch.logsumexp(logits, dim=-1)
        target = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        logprobs = target - log_z
        entropy = None
        if "entropy" in outputs:
            entropy = log_z - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        with torch.no_grad():  # the kernel marks these three non-differentiable
            log_sum_sq = (
                torch.logsumexp(2 * (logits - log_z.unsqueeze(-1)), -1) if "log_sum_sq_probs" in outputs else None
            )
            mean_logits = logits.mean(-1) if "mean_logits" in outputs else None
            # argmax takes the first maximum, as the kernel's "target >= max and > every earlier logit" does.
            is_top1 = logits.argmax(-1) == targets if "is_top1" in outputs else None
        return logprobs, entropy, log_sum_sq, mean_logits, is_top1


def install(device: str) -> bool:
    """On a CPU, route TRL's fused LM head through `TorchLogProbs`; True when it did."""
    if device == "cuda":
        return False
    import trl.trainer.utils as trl_utils

    trl_utils._ChunkedLogProbFunction = TorchLogProbs  # no public switch (trl 1.15); see the module docstring
    return True
