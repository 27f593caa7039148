"""Request-side types: generation parameters, merged adapters, response formats, and the
client-side checks that mirror the server's rules (API.md), so a mistake fails before the network.

Every rule violation raises :class:`lorax.errors.ValidationError`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, Self, TypedDict

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lorax.errors import ValidationError, json_object

__all__ = [
    "ADAPTER_SOURCES",
    "MAJORITY_SIGN_METHODS",
    "MERGE_STRATEGIES",
    "GenerateParams",
    "MergedAdapters",
    "Parameters",
    "Request",
    "ResponseFormat",
    "ResponseFormatType",
    "StreamParams",
    "build_request",
]

# "pbase" is upstream LoRAX's Predibase source; it is kept so the client still talks to those
# servers (ours answers it with a 422).
ADAPTER_SOURCES = ("hub", "local", "s3", "pbase")
MERGE_STRATEGIES = ("linear", "ties", "dare_linear", "dare_ties")
MAJORITY_SIGN_METHODS = ("total", "frequency")


class MergedAdapters(BaseModel):
    """Several adapters merged into one for a single request.

    `weights[i]` scales adapter `ids[i]`; `density` is the fraction of weights kept by the
    `ties` / `dare_*` strategies.
    """

    model_config = ConfigDict(extra="allow")

    ids: list[str]
    weights: list[float]
    merge_strategy: str | None = None
    density: float = 1.0
    majority_sign_method: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.ids:
            raise ValidationError("`merged_adapters.ids` cannot be empty")
        if len(self.ids) != len(self.weights):
            raise ValidationError("`merged_adapters.ids` and `weights` must have the same length")
        if self.merge_strategy is not None and self.merge_strategy not in MERGE_STRATEGIES:
            raise ValidationError(f"`merge_strategy` must be one of {list(MERGE_STRATEGIES)}")
        if not 0.0 <= self.density <= 1.0:
            raise ValidationError("`density` must be >= 0.0 and <= 1.0")
        if (
            self.majority_sign_method is not None
            and self.majority_sign_method not in MAJORITY_SIGN_METHODS
        ):
            raise ValidationError(
                f"`majority_sign_method` must be one of {list(MAJORITY_SIGN_METHODS)}"
            )
        return self


class ResponseFormatType(StrEnum):
    """What shape the generated text must have."""

    text = "text"
    json_object = "json_object"
    json_schema = "json_schema"


class ResponseFormat(BaseModel):
    """Constrain the output (JSON mode): `{"type": "json_object", "schema": {...}}`.

    The OpenAI spelling `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`
    is accepted too and sent in LoRAX's shape.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, use_enum_values=True)

    type: ResponseFormatType | Literal["text", "json_object", "json_schema"]
    schema_spec: dict[str, Any] | None = Field(default=None, alias="schema")

    @model_validator(mode="before")
    @classmethod
    def _openai_spelling(cls, data: Any) -> Any:
        given = json_object(data)
        if given is None or "schema" in given or "schema_spec" in given:
            return data
        wrapper = json_object(given.get("json_schema"))
        if wrapper is None or "schema" not in wrapper:
            return data
        fields = {k: v for k, v in given.items() if k != "json_schema"}
        fields["schema"] = wrapper["schema"]
        return fields

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.type == ResponseFormatType.json_schema.value and self.schema_spec is None:
            raise ValidationError("`response_format` of type `json_schema` needs a `schema`")
        if self.type == ResponseFormatType.text.value and self.schema_spec is not None:
            raise ValidationError("`response_format` of type `text` takes no `schema`")
        return self


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValidationError(f"`{name}` must be strictly positive")


class Parameters(BaseModel):
    """The `parameters` object of a generate request. The wire format of API.md."""

    model_config = ConfigDict(extra="allow")

    adapter_id: str | None = None
    adapter_source: str | None = None
    merged_adapters: MergedAdapters | None = None
    # A credential: never shown in reprs or logs.
    api_token: str | None = Field(default=None, repr=False)
    do_sample: bool = False
    max_new_tokens: int | None = None
    ignore_eos_token: bool = False
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    return_full_text: bool = False
    stop: list[str] = Field(default_factory=list[str])
    seed: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    best_of: int | None = None
    watermark: bool | None = None
    details: bool = False
    decoder_input_details: bool = False
    return_k_alternatives: int | None = None
    response_format: ResponseFormat | None = None

    @field_validator("adapter_source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is not None and value not in ADAPTER_SOURCES:
            raise ValidationError(
                f"`adapter_source={value}` must be one of {list(ADAPTER_SOURCES)}"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.adapter_id and self.merged_adapters is not None:
            raise ValidationError("give at most one of `adapter_id` and `merged_adapters`")
        for name in ("max_new_tokens", "top_k", "repetition_penalty", "truncate"):
            _positive(name, getattr(self, name))
        if self.return_k_alternatives is not None and self.return_k_alternatives < 0:
            raise ValidationError("`return_k_alternatives` must be >= 0")
        if any(not s for s in self.stop):
            raise ValidationError("`stop` sequences must not be empty")
        if self.temperature is not None and self.temperature < 0:
            raise ValidationError("`temperature` must be non-negative")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValidationError("`top_p` must be > 0.0 and <= 1.0")
        if self.typical_p is not None and not 0.0 < self.typical_p < 1.0:
            raise ValidationError("`typical_p` must be > 0.0 and < 1.0")
        for name in ("frequency_penalty", "presence_penalty"):
            value: float | None = getattr(self, name)
            if value is not None and not -2.0 <= value <= 2.0:
                raise ValidationError(f"`{name}` must be >= -2.0 and <= 2.0")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ValidationError("`seed` must be in [0, 2**64)")
        if self.best_of is not None:
            _positive("best_of", self.best_of)
            if self.best_of > 1 and self.seed is not None:
                raise ValidationError("`seed` must not be set when `best_of` > 1")
            if self.best_of > 1 and not self._sampling():
                raise ValidationError("`best_of` > 1 needs sampling (`do_sample=True`)")
        return self

    def _sampling(self) -> bool:
        # temperature 0 alone means greedy; any other sampling knob turns sampling on.
        return (
            self.do_sample
            or (self.temperature is not None and self.temperature > 0)
            or any(v is not None for v in (self.top_k, self.top_p, self.typical_p))
        )


class Request(BaseModel):
    """A generate request body: `{inputs, parameters}` (plus `stream` for `POST /`)."""

    model_config = ConfigDict(extra="allow")

    inputs: str
    parameters: Parameters | None = None
    stream: bool = False

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.inputs:
            raise ValidationError("`inputs` cannot be empty")
        params = self.parameters
        if self.stream and params is not None:
            if params.best_of is not None and params.best_of > 1:
                raise ValidationError("`best_of` > 1 is not supported when streaming")
            if params.decoder_input_details:
                raise ValidationError("`decoder_input_details` is not supported when streaming")
        return self

    def wire_body(self) -> dict[str, Any]:
        """The JSON body for `POST /generate` and `/generate_stream` (which take no `stream`)."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude={"stream"})


class StreamParams(TypedDict, total=False):
    """Keyword arguments of `generate_stream` (and `generate`). See API.md for each field's rule."""

    adapter_id: str | None
    """Adapter to apply; None or "" is the base model."""
    adapter_source: Literal["hub", "local", "s3", "pbase"] | None
    merged_adapters: MergedAdapters | dict[str, Any] | None
    api_token: str | None
    """Credential for a private adapter on the hub."""
    do_sample: bool
    max_new_tokens: int | None
    ignore_eos_token: bool
    repetition_penalty: float | None
    frequency_penalty: float | None
    presence_penalty: float | None
    return_full_text: bool
    seed: int | None
    stop_sequences: list[str] | None
    """Sent as `stop`."""
    temperature: float | None
    top_k: int | None
    top_p: float | None
    truncate: int | None
    typical_p: float | None
    watermark: bool
    """Accepted for upstream compatibility; sent only when True."""
    response_format: ResponseFormat | dict[str, Any] | None
    details: bool
    """Defaults to True, as upstream."""
    return_k_alternatives: int | None


class GenerateParams(StreamParams, total=False):
    """Keyword arguments of `generate`: those of `generate_stream` plus the non-streaming ones."""

    best_of: int | None
    decoder_input_details: bool


def build_request(prompt: str, params: StreamParams, *, stream: bool) -> Request:
    """Turn a call's keyword arguments into a validated :class:`Request`.

    Raises:
        ValidationError: a rule of API.md is broken, or an argument has the wrong type.
    """
    fields: dict[str, Any] = dict(params)
    unknown = sorted(set(fields) - GenerateParams.__optional_keys__)
    if unknown:
        # Parameters tolerates extra fields (newer servers); a caller's typo must not pass silently.
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    stop = fields.pop("stop_sequences", None)
    fields["stop"] = [] if stop is None else stop
    fields.setdefault("details", True)
    if not fields.get("watermark"):
        fields.pop("watermark", None)
    try:
        return Request(inputs=prompt, parameters=Parameters(**fields), stream=stream)
    except pydantic.ValidationError as exc:
        # Wrong types (a string for top_k, ...) become the package's own error, like rule breaks.
        raise ValidationError(_describe(exc)) from exc


def _describe(exc: pydantic.ValidationError) -> str:
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "request"
        parts.append(f"`{where}`: {error['msg']}")
    return "; ".join(parts)
