"""The CPU stand-in for TRL's Triton LM-head kernel computes what a log-softmax over full logits computes:
values and gradients, with a logit scale, soft-capping and a temperature."""

from __future__ import annotations

import pytest

from smoltune.preference.cpu_logprobs import TorchLogProbs


@pytest.mark.parametrize(("softcap", "scale", "temperature"), [(None, 1.0, 1.0), (30.0, 0.5, 0.7)])
def test_same_values_and_gradients_as_full_logits(softcap: float | None, scale: float, temperature: float) -> None:
    import torch

    torch.manual_seed(0)
    hidden = torch.randn(9, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (9,))
    outputs = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    logp, entropy, log_sum_sq, mean_logits, is_top1 = TorchLogProbs.apply(
        hidden, weight, None, targets, temperature, 64, softcap, scale, outputs
    )
    (logp.sum() + entropy.sum()).backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    logits = (hidden @ weight.T) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logits = logits / temperature
    full = torch.log_softmax(logits, -1)
    want = full.gather(-1, targets[:, None]).squeeze(-1)
    want_entropy = -(full.exp() * full).sum(-1)
    (want.sum() + want_entropy.sum()).backward()
    torch.testing.assert_close(logp, want)
    torch.testing.assert_close(entropy, want_entropy)
    torch.testing.assert_close(got[0], hidden.grad)
    torch.testing.assert_close(got[1], weight.grad)
    torch.testing.assert_close(log_sum_sq, torch.logsumexp(2 * full, -1).detach())
    torch.testing.assert_close(mean_logits, logits.mean(-1).detach())
    assert torch.equal(is_top1, logits.argmax(-1) == targets)


def test_only_what_is_asked_is_computed() -> None:
    import torch

    hidden, weight, targets = torch.randn(3, 4), torch.randn(7, 4), torch.tensor([1, 2, 3])
    logp, entropy, log_sum_sq, mean_logits, is_top1 = TorchLogProbs.apply(hidden, weight, None, targets, 1.0, 8)
    assert logp.shape == (3,) and entropy is not None
    none = TorchLogProbs.apply(hidden, weight, None, targets, 1.0, 8, None, 1.0, ())
    assert none[1:] == (None, None, None, None)
