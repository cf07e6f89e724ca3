"""DNQ's bit-width controller (arXiv 1812.02375): per-layer bit widths by policy gradient.

The policy holds, per layer, logits over the candidate bit widths. Each
episode samples one width per layer, scores the network with every layer
snapped to its grid at that width (no re-training; validation accuracy),
and rewards ``accuracy - tradeoff * average_bits / max_bits``; an
assignment above the size budget (parameter-weighted average bits) gets
reward -1, so the policy learns to stay inside it. REINFORCE with a moving
baseline and Adam. The final assignment is the policy's most likely widths;
if that exceeds the budget, the layer whose narrowing costs the least
policy probability per saved bit is narrowed until it fits, so the result
always respects the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def average_bits(bits: list[int], params: list[int]) -> float:
    return sum(b * p for b, p in zip(bits, params, strict=True)) / sum(params)


@dataclass
class ControllerResult:
    bits: list[int]
    average_bits: float
    history: list[dict]


def search_bit_widths(
    params: list[int],
    evaluate: Callable[[list[int]], float],
    budget_bits: float,
    choices: tuple[int, ...] = (2, 3, 4, 5, 6, 8),
    episodes: int = 40,
    lr: float = 0.1,
    tradeoff: float = 0.05,
    seed: int = 0,
) -> ControllerResult:
    """Trains the controller; returns per-layer bit widths within ``budget_bits``.

    Args:
        params: weights per layer (the size weights of the average).
        evaluate: bit widths per layer -> validation accuracy in [0, 1].
        budget_bits: the largest allowed parameter-weighted average bit width.
    """
    choices = tuple(sorted(choices))
    if budget_bits < choices[0]:
        raise ValueError(
            f"budget_bits: {budget_bits} is below the narrowest width {choices[0]}; "
            "no bit assignment can meet it"
        )
    gen = torch.Generator().manual_seed(seed)
    logits = torch.zeros(len(params), len(choices), requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    baseline = None
    history = []
    for ep in range(episodes):
        probs = torch.softmax(logits, dim=-1)
        idx = torch.multinomial(probs.detach(), 1, generator=gen).squeeze(1)
        bits = [choices[i] for i in idx.tolist()]
        avg = average_bits(bits, params)
        if avg > budget_bits:
            reward, acc = -1.0, None
        else:
            acc = evaluate(bits)
            reward = acc - tradeoff * avg / choices[-1]
        baseline = reward if baseline is None else 0.8 * baseline + 0.2 * reward
        log_prob = torch.log(probs[torch.arange(len(params)), idx]).sum()
        opt.zero_grad()
        (-(reward - baseline) * log_prob).backward()
        opt.step()
        history.append(
            {"episode": ep, "bits": bits, "average_bits": avg, "accuracy": acc, "reward": reward}
        )
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1)
    idx = probs.argmax(dim=-1).tolist()
    while average_bits([choices[i] for i in idx], params) > budget_bits:
        # Narrow the layer whose next-narrower width the policy minds least per bit saved.
        best, best_cost = None, None
        for layer, i in enumerate(idx):
            if i == 0:
                continue
            saved = (choices[i] - choices[i - 1]) * params[layer]
            cost = float(probs[layer, i] - probs[layer, i - 1]) / saved
            if best_cost is None or cost < best_cost:
                best, best_cost = layer, cost
        idx[best] -= 1
    bits = [choices[i] for i in idx]
    return ControllerResult(bits, average_bits(bits, params), history)
