"""Request bodies of the LoRAX REST routes, validated for shape (API.md ``parameters``).

Rules that need the tokenizer or the engine's limits (input length, ``max_total_tokens``,
``truncate``, ``best_of`` against ``max_best_of``) belong to the engine, which answers them with a
``validation`` error event; everything that can be checked from the JSON alone is checked here so
bad requests never reach the engine queue.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Most alternatives per token a request may ask for: generous for LoRAX clients (OpenAI's
#: `top_logprobs` stops at 20), small enough that a stream's size stays bounded by its tokens.
MAX_ALTERNATIVES = 100

MergeStrategy = Literal["linear", "ties", "dare_linear", "dare_ties"]


class MergedAdapters(BaseModel):
    """Several adapters merged per request."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1)
    weights: list[float] = Field(min_length=1)
    merge_strategy: MergeStrategy = "linear"
    density: float = Field(default=1.0, gt=0.0, le=1.0)
    majority_sign_method: Literal["total", "frequency"] = "total"

    @model_validator(mode="after")
    def _same_length(self) -> MergedAdapters:
        if len(self.ids) != len(self.weights):
            raise ValueError("merged_adapters.ids and merged_adapters.weights differ in length")
        return self


class ResponseFormat(BaseModel):
    """Constrained output: free text, any JSON object, or JSON matching ``schema``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class Parameters(BaseModel):
    """Generation parameters of ``/generate``, ``/generate_stream`` and ``POST /``."""

    # Upstream clients send fields we do not implement (e.g. `watermark`): accept and ignore them.
    model_config = ConfigDict(extra="ignore")

    adapter_id: str | None = None
    adapter_source: Literal["hub", "local", "s3", "pbase"] | None = None
    merged_adapters: MergedAdapters | None = None
    api_token: str | None = Field(default=None, repr=False)
    max_new_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0)
    top_k: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    typical_p: float | None = Field(default=None, gt=0.0, lt=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    do_sample: bool = False
    seed: int | None = Field(default=None, ge=0)
    stop: list[str] = Field(default_factory=list[str])
    return_full_text: bool = False
    truncate: int | None = Field(default=None, gt=0)
    details: bool = False
    decoder_input_details: bool = False
    # Bounded: an unbounded count let one request make the engine build billions of alternatives
    # per token (found by schemathesis: the synthetic-backed gateway was OOM-killed).
    return_k_alternatives: int | None = Field(default=None, ge=0, le=MAX_ALTERNATIVES)
    best_of: int | None = Field(default=None, gt=0)
    ignore_eos_token: bool = False
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> Parameters:
        if self.adapter_id and self.merged_adapters is not None:
            raise ValueError("adapter_id and merged_adapters cannot be used together")
        if self.best_of is not None and self.best_of > 1:
            sampling = self.do_sample or (self.temperature is not None and self.temperature > 0)
            sampling = sampling or self.top_k is not None or self.top_p is not None
            if not sampling:
                raise ValueError("best_of > 1 needs sampling (do_sample or a sampling parameter)")
            if self.seed is not None:
                raise ValueError("best_of > 1 cannot be used with a seed")
        if any(s == "" for s in self.stop):
            raise ValueError("stop sequences must not be empty")
        return self

    def engine_dict(self) -> dict[str, Any]:
        """The parameters as the engine protocol carries them (defaults left out, ``schema`` named)."""
        return self.model_dump(exclude_none=True, by_alias=True)


class GenerateRequest(BaseModel):
    """Body of ``/generate`` and ``/generate_stream``."""

    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: Parameters = Field(default_factory=Parameters)


class CompatGenerateRequest(GenerateRequest):
    """Body of ``POST /``: like ``/generate`` plus ``stream``."""

    stream: bool = False


class TokenizeRequest(BaseModel):
    """Body of ``/tokenize``."""

    model_config = ConfigDict(extra="ignore")

    inputs: str
    add_special_tokens: bool = True
