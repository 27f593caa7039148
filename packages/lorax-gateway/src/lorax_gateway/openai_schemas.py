"""Request bodies of the OpenAI-compatible routes (``/v1/completions``, ``/v1/chat/completions``).

``model`` names the adapter; ``""`` or the base model id is the base model. Unknown fields that
the OpenAI SDK may send (``user``, ``metadata``...) are accepted and ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lorax_gateway.schemas import ResponseFormat


class StreamOptions(BaseModel):
    """``stream_options``."""

    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class JsonSchemaSpec(BaseModel):
    """OpenAI ``response_format.json_schema``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class OpenAIResponseFormat(BaseModel):
    """OpenAI ``response_format``: our flat ``{type, schema}`` is accepted too."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")

    def to_engine(self) -> ResponseFormat | None:
        """The engine's ``{type, schema}`` form (None for plain text)."""
        if self.type == "text":
            return None
        schema = self.schema_
        if self.type == "json_schema":
            if self.json_schema is not None and self.json_schema.schema_ is not None:
                schema = self.json_schema.schema_
            if schema is None:
                raise ValueError("response_format json_schema needs a schema")
        return ResponseFormat.model_validate({"type": self.type, "schema": schema})


class CommonFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, gt=0)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    response_format: OpenAIResponseFormat | None = None
    ignore_eos_token: bool = False
    # LoRAX extensions, sent by the OpenAI SDK through `extra_body`.
    adapter_source: Literal["hub", "local", "s3", "pbase"] | None = None
    api_token: str | None = Field(default=None, repr=False)

    def stop_list(self) -> list[str]:
        """``stop`` as a list."""
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @property
    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(CommonFields):
    """Body of ``/v1/completions``."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, gt=0)
    best_of: int | None = Field(default=None, ge=1)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        if self.best_of is not None and self.best_of > 1 and (self.stream or self.n > 1):
            raise ValueError("best_of > 1 is supported only with n = 1 and without stream")
        return self

    def prompts(self) -> list[str]:
        """``prompt`` as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ChatMessage(BaseModel):
    """One chat message; ``content`` may be a string or a list of text parts."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def engine_dict(self) -> dict[str, Any]:
        """The message with text parts joined, for the chat template."""
        out = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            texts: list[str] = []
            for part in self.content:
                if part.get("type") != "text":
                    raise ValueError(f"unsupported content part type {part.get('type')!r}")
                texts.append(str(part.get("text", "")))
            out["content"] = "".join(texts)
        return out


class ChatCompletionRequest(CommonFields):
    """Body of ``/v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None

    @property
    def max_new_tokens(self) -> int | None:
        """``max_completion_tokens`` (new name) or ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens
