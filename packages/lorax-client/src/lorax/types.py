"""Typed responses of the LoRAX REST API (and re-exports of the request-side types).

Every model accepts fields it does not know (`extra="allow"`), so a newer server that adds a field
never breaks an older client; the unknown fields stay readable as attributes and in
`model_extra`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from lorax.parameters import (
    ADAPTER_SOURCES,
    MAJORITY_SIGN_METHODS,
    MERGE_STRATEGIES,
    MergedAdapters,
    Parameters,
    Request,
    ResponseFormat,
    ResponseFormatType,
)

__all__ = [
    "ADAPTER_SOURCES",
    "MAJORITY_SIGN_METHODS",
    "MERGE_STRATEGIES",
    "AlternativeToken",
    "BestOfSequence",
    "Details",
    "FinishReason",
    "Info",
    "InputToken",
    "MergedAdapters",
    "Model",
    "Parameters",
    "Request",
    "Response",
    "ResponseFormat",
    "ResponseFormatType",
    "SimpleToken",
    "StreamDetails",
    "StreamResponse",
    "Token",
]


class _Model(BaseModel):
    # `model_id` and friends are real API fields, not pydantic internals.
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class FinishReason(StrEnum):
    """Why generation stopped."""

    Length = "length"
    """`max_new_tokens` tokens were generated."""
    EndOfSequenceToken = "eos_token"
    """The model produced its end-of-sequence token."""
    StopSequence = "stop_sequence"
    """The text hit one of the `stop` sequences."""


# A newer server may add a finish reason: keep it as a plain string instead of failing, but
# prefer the enum (left to right) for the known ones.
_FinishReasonField = Annotated[FinishReason | str, Field(union_mode="left_to_right")]


class InputToken(_Model):
    """A prompt token (`decoder_input_details`); the first has no logprob."""

    id: int
    text: str
    logprob: float | None = None


class AlternativeToken(_Model):
    """One of the `return_k_alternatives` most likely tokens at a position."""

    id: int
    text: str
    logprob: float


class Token(_Model):
    """A generated token."""

    id: int
    text: str
    logprob: float | None = None
    special: bool = False
    """Special tokens (EOS, ...) are usually left out when concatenating text."""
    alternative_tokens: list[AlternativeToken] | None = None


class BestOfSequence(_Model):
    """One of the other candidates of a `best_of` request."""

    generated_text: str
    finish_reason: _FinishReasonField
    generated_tokens: int
    seed: int | None = None
    prefill: list[InputToken] = Field(default_factory=list[InputToken])
    tokens: list[Token] = Field(default_factory=list[Token])


class Details(_Model):
    """Generation details of a non-streaming `generate` call."""

    finish_reason: _FinishReasonField
    prompt_tokens: int | None = None
    generated_tokens: int
    seed: int | None = None
    prefill: list[InputToken] = Field(default_factory=list[InputToken])
    tokens: list[Token] = Field(default_factory=list[Token])
    best_of_sequences: list[BestOfSequence] | None = None


class Response(_Model):
    """The result of `generate`."""

    generated_text: str
    details: Details | None = None


class StreamDetails(_Model):
    """Generation details, sent with the last event of a stream."""

    finish_reason: _FinishReasonField
    prompt_tokens: int | None = None
    generated_tokens: int
    seed: int | None = None


class StreamResponse(_Model):
    """One event of `generate_stream`: a token; the last one also has the whole text and details."""

    token: Token
    generated_text: str | None = None
    """Only on the last event."""
    details: StreamDetails | None = None
    """Only on the last event, and only when `details=True`."""


class SimpleToken(_Model):
    """One token of `tokenize`: its id, text and character span in the input."""

    id: int
    text: str
    start: int
    stop: int


class Info(_Model):
    """What `GET /info` says about the server. Fields a server leaves out are None; upstream LoRAX
    spells `dtype`/`device` as `model_dtype`/`model_device_type`, which are accepted too."""

    model_id: str
    dtype: str | None = Field(default=None, validation_alias=AliasChoices("dtype", "model_dtype"))
    device: str | None = Field(
        default=None, validation_alias=AliasChoices("device", "model_device_type")
    )
    max_input_length: int | None = None
    max_total_tokens: int | None = None
    max_concurrent_requests: int | None = None
    max_best_of: int | None = None
    max_stop_sequences: int | None = None
    version: str | None = None


class Model(_Model):
    """One entry of `GET /v1/models` (OpenAI shape): the base model or an adapter."""

    id: str
    object: str = "model"
    created: int | None = None
    owned_by: str | None = None
