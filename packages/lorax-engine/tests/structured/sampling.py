"""A random-logits "model" decoding under a constraint: the test double for a tiny random LLM,
which never emits JSON by itself, so every valid document is the constraint's doing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lorax_engine.structured import TokenConstraint, apply_token_bitmask_


@dataclass(slots=True)
class Decoded:
    tokens: list[int]
    finished_with_stop: bool


def random_decode(
    constraint: TokenConstraint,
    vocab_size: int,
    stop_token_ids: tuple[int, ...],
    seed: int,
    max_new_tokens: int,
    *,
    forbidden: tuple[int, ...] = (),
    greedy: bool = False,
    logits_width: int | None = None,
) -> Decoded:
    """Sample from scaled N(0, 1) logits (of `logits_width` columns, default the vocab) under
    the constraint, checking at every step that a stop token is allowed exactly when the
    document is finished, that no `forbidden` token (other special tokens) is ever allowed, and
    that columns past the vocabulary are never allowed."""
    gen = torch.Generator().manual_seed(seed)
    width = logits_width or vocab_size
    mask = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
    tokens: list[int] = []
    for _ in range(max_new_tokens):
        constraint.fill_allowed(mask)
        logits = torch.randn((1, width), generator=gen) * 3.0  # [1, vocab]
        apply_token_bitmask_(logits, torch.from_numpy(mask).unsqueeze(0))
        allowed = torch.isfinite(logits[0])
        stop_allowed = any(bool(allowed[s]) for s in stop_token_ids)
        assert stop_allowed == constraint.is_finished(), "stop allowed iff document complete"
        assert not any(bool(allowed[t]) for t in forbidden), "special token allowed"
        assert not bool(allowed[vocab_size:].any()), "padding column allowed"
        if greedy:
            token = int(logits[0].argmax())
        else:
            token = int(torch.multinomial(torch.softmax(logits[0], -1), 1, generator=gen))
        assert bool(allowed[token])
        if token in stop_token_ids:
            return Decoded(tokens, True)
        assert constraint.accept(token)
        tokens.append(token)
    return Decoded(tokens, False)
