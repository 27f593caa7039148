"""Sampling parameters of one request, validated against the engine's limits."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from lorax_engine.errors import ValidationError


@dataclass(slots=True, frozen=True)
class Limits:
    """LoRAX launcher limits, with the launcher's flag names."""

    max_input_length: int = 1024
    max_total_tokens: int = 2048
    max_concurrent_requests: int = 128
    max_best_of: int = 2
    max_stop_sequences: int = 4

    def __post_init__(self) -> None:
        if self.max_input_length <= 0 or self.max_total_tokens <= self.max_input_length:
            raise ValueError("need 0 < max_input_length < max_total_tokens")
        if (
            self.max_concurrent_requests <= 0
            or self.max_best_of <= 0
            or self.max_stop_sequences < 0
        ):
            raise ValueError("max_concurrent_requests and max_best_of must be positive")


@dataclass(slots=True, frozen=True)
class SamplingParams:
    """One sequence's decoding rules (a best_of request fans out into several of these)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    typical_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    do_sample: bool = False
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    return_k_alternatives: int = 0
    decoder_input_details: bool = False
    best_of: int = 1

    @property
    def greedy(self) -> bool:
        """Greedy unless sampling was asked for (``do_sample`` or any warper), and temperature 0 always wins."""
        if self.temperature == 0.0:
            return True
        warped = (
            self.temperature != 1.0 or self.top_k > 0 or self.top_p < 1.0 or self.typical_p < 1.0
        )
        return not (self.do_sample or warped)

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )


def _num(params: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"`{name}` must be a number")
    if kind is int and not float(value).is_integer():
        raise ValidationError(f"`{name}` must be an integer")
    return kind(value)


def parse_parameters(params: dict[str, Any], input_length: int, limits: Limits) -> SamplingParams:
    """Validate the API ``parameters`` for a prompt of ``input_length`` tokens (after truncation)."""
    temperature = _num(params, "temperature", float, 1.0)
    if temperature < 0:
        raise ValidationError("`temperature` must be >= 0")
    top_k = _num(params, "top_k", int, 0)
    if params.get("top_k") is not None and top_k <= 0:
        raise ValidationError("`top_k` must be strictly positive")
    top_p = _num(params, "top_p", float, 1.0)
    if not 0.0 < top_p <= 1.0:
        raise ValidationError("`top_p` must be > 0.0 and <= 1.0")
    typical_p = _num(params, "typical_p", float, 1.0)
    if params.get("typical_p") is not None and not 0.0 < typical_p < 1.0:
        raise ValidationError("`typical_p` must be > 0.0 and < 1.0")
    repetition_penalty = _num(params, "repetition_penalty", float, 1.0)
    if repetition_penalty <= 0:
        raise ValidationError("`repetition_penalty` must be strictly positive")
    penalties = {}
    for name in ("frequency_penalty", "presence_penalty"):
        penalties[name] = _num(params, name, float, 0.0)
        if not -2.0 <= penalties[name] <= 2.0:
            raise ValidationError(f"`{name}` must be >= -2.0 and <= 2.0")
    stop = params.get("stop") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ValidationError("`stop` must be a list of non-empty strings")
    if len(stop) > limits.max_stop_sequences:
        raise ValidationError(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(stop)}"
        )
    best_of = _num(params, "best_of", int, 1)
    do_sample = bool(params.get("do_sample") or False)
    seed_value = params.get("seed")
    if best_of <= 0:
        raise ValidationError("`best_of` must be strictly positive")
    if best_of > 1:
        if best_of > limits.max_best_of:
            raise ValidationError(f"`best_of` must be <= {limits.max_best_of}")
        if seed_value is not None:
            raise ValidationError("`seed` must not be set when `best_of` > 1")
    k_alt = _num(params, "return_k_alternatives", int, 0)
    if k_alt < 0:
        raise ValidationError("`return_k_alternatives` must be >= 0")
    max_input = limits.max_input_length
    if input_length > max_input:
        raise ValidationError(
            f"`inputs` must have less than {max_input} tokens. Given: {input_length}"
        )
    if input_length == 0:
        raise ValidationError("`inputs` must not be empty")
    room = limits.max_total_tokens - input_length
    max_new_tokens = _num(params, "max_new_tokens", int, room)
    if max_new_tokens <= 0:
        raise ValidationError("`max_new_tokens` must be strictly positive")
    if input_length + max_new_tokens > limits.max_total_tokens:
        raise ValidationError(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    seed = _num(params, "seed", int, None)
    if seed is None:
        seed = random.getrandbits(63)
    elif not 0 <= seed < 2**64:
        raise ValidationError("`seed` must be in [0, 2**64)")
    sp = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        typical_p=typical_p,
        repetition_penalty=repetition_penalty,
        frequency_penalty=penalties["frequency_penalty"],
        presence_penalty=penalties["presence_penalty"],
        do_sample=do_sample,
        seed=seed,
        stop=tuple(stop),
        ignore_eos=bool(params.get("ignore_eos_token") or False),
        return_k_alternatives=k_alt,
        decoder_input_details=bool(params.get("decoder_input_details") or False),
        best_of=best_of,
    )
    if best_of > 1 and sp.greedy:
        raise ValidationError("`best_of` > 1 needs sampling (`do_sample` or a sampling parameter)")
    return sp


def parse_truncate(params: dict[str, Any], limits: Limits) -> int | None:
    """The ``truncate`` parameter: keep only the last N input tokens."""
    truncate = _num(params, "truncate", int, None)
    if truncate is not None and not 0 < truncate <= limits.max_input_length:
        raise ValidationError(
            f"`truncate` must be strictly positive and <= {limits.max_input_length}"
        )
    return truncate
