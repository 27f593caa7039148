"""A synthetic engine that follows the engine event protocol without a model.

It "generates" by echoing the prompt's words (upper-cased when an adapter is used), then an EOS
token, so every field of the protocol is produced deterministically: stop sequences, EOS and
length finish reasons, prefill details, alternatives, best_of sequences, validation errors and
adapter load failures. The gateway's own tests and its benchmark run against it; it is also
selectable as ``--backend synthetic`` to try the API without a GPU.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lorax_gateway.backends.base import EngineEvent

_WORD = re.compile(r"\s*\S+|\s+$")
_EOS_ID = 2


@dataclass(slots=True)
class SyntheticConfig:
    """Behaviour of the synthetic engine."""

    model_id: str = "synthetic"
    max_input_length: int = 1024
    max_total_tokens: int = 2048
    max_best_of: int = 4
    max_stop_sequences: int = 4
    #: Adapters that "load"; any other adapter id fails like an engine's adapter load failure.
    adapters: tuple[str, ...] = ()
    #: Seconds between tokens (0 emits instantly, yielding to the event loop between tokens).
    token_delay_s: float = 0.0
    #: Make every token's text its emission time (``time.monotonic_ns()``), for the benchmark.
    stamp_tokens: bool = False
    healthy: bool = True

    def __post_init__(self) -> None:
        if self.max_input_length <= 0 or self.max_total_tokens <= self.max_input_length:
            raise ValueError("need 0 < max_input_length < max_total_tokens")
        if self.token_delay_s < 0:
            raise ValueError("token_delay_s must be >= 0")


def _token_id(text: str) -> int:
    # Stable ids without a vocabulary: a small hash of the text, away from the special ids.
    return 3 + (sum(text.encode()) * 2654435761) % 31997


@dataclass(slots=True)
class SyntheticBackend:
    """The synthetic engine (see module docstring). ``active``/``cancelled`` are for tests."""

    config: SyntheticConfig = field(default_factory=SyntheticConfig)
    name: str = "synthetic"
    renders_chat: bool = False
    active: int = 0
    cancelled: int = 0
    completed: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    trace_headers: list[dict[str, str]] = field(default_factory=list[dict[str, str]])

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SyntheticBackend:
        """Build from ``--backend-option`` values (names of :class:`SyntheticConfig`)."""
        opts = dict(options)
        if "adapters" in opts:
            adapters = opts["adapters"]
            opts["adapters"] = tuple(adapters.split(",") if isinstance(adapters, str) else adapters)
        return cls(config=SyntheticConfig(**opts))

    async def start(self) -> None:
        """Nothing to load."""

    async def close(self) -> None:
        """Nothing to release."""

    @staticmethod
    def _words(text: str) -> list[str]:
        return _WORD.findall(text)

    def generate(
        self, request: dict[str, Any], trace_headers: Mapping[str, str]
    ) -> AsyncIterator[EngineEvent]:
        """Echo the prompt as tokens (see module docstring)."""
        self.requests.append(request)
        self.trace_headers.append(dict(trace_headers))
        return self._run(request)

    async def _run(self, request: dict[str, Any]) -> AsyncIterator[EngineEvent]:
        cfg = self.config
        started = time.monotonic()
        params: dict[str, Any] = request.get("parameters") or {}
        words = self._words(str(request.get("inputs", "")))
        truncate = params.get("truncate")
        if truncate is not None:
            if truncate > cfg.max_input_length:
                yield _error("validation", f"truncate must be <= {cfg.max_input_length}")
                return
            words = words[-truncate:]
        if len(words) > cfg.max_input_length:
            yield _error(
                "validation",
                f"inputs must have less than {cfg.max_input_length} tokens, got {len(words)}",
            )
            return
        if len(params.get("stop", [])) > cfg.max_stop_sequences:
            yield _error("validation", f"at most {cfg.max_stop_sequences} stop sequences")
            return
        best_of = int(params.get("best_of") or 1)
        if best_of > cfg.max_best_of:
            yield _error("validation", f"best_of must be <= {cfg.max_best_of}")
            return
        budget = cfg.max_total_tokens - len(words)
        max_new = int(params.get("max_new_tokens") or budget)
        if len(words) + max_new > cfg.max_total_tokens:
            yield _error(
                "validation",
                f"inputs tokens + max_new_tokens must be <= {cfg.max_total_tokens}",
            )
            return
        adapter = params.get("adapter_id") or None
        merged: dict[str, Any] = params.get("merged_adapters") or {}
        names: list[str] = [adapter] if adapter else list(merged.get("ids", []))
        for name in names:
            if name not in cfg.adapters:
                yield _error("generation", f"adapter {name} could not be loaded")
                return
        use_adapter = bool(adapter or merged)
        self.active += 1
        finished = False
        try:
            if params.get("decoder_input_details"):
                yield {
                    "type": "prefill",
                    "tokens": [
                        {"id": _token_id(w), "text": w, "logprob": None if i == 0 else -1.0}
                        for i, w in enumerate(words)
                    ],
                }
            queue_time = time.monotonic() - started
            source = words or [" ..."]
            ignore_eos = bool(params.get("ignore_eos_token"))
            stops: list[str] = list(params.get("stop", []))
            k_alt = int(params.get("return_k_alternatives") or 0)
            text = ""
            reason = "length"
            generated = 0
            for i in range(max_new):
                if cfg.token_delay_s:
                    await asyncio.sleep(cfg.token_delay_s)
                else:
                    await asyncio.sleep(0)
                if not ignore_eos and i == len(source):
                    generated += 1
                    yield {"type": "token", "token": _token(_EOS_ID, "</s>", -0.5, True, k_alt)}
                    reason = "eos_token"
                    break
                word = source[i % len(source)]
                if use_adapter:
                    word = word.upper()
                if cfg.stamp_tokens:
                    word = f" {time.monotonic_ns()}"
                text += word
                generated += 1
                yield {"type": "token", "token": _token(_token_id(word), word, -0.25, False, k_alt)}
                if any(s in text for s in stops):
                    reason = "stop_sequence"
                    break
            seed = params.get("seed")
            if seed is None and params.get("do_sample"):
                seed = 1234
            best_of_sequences = None
            if best_of > 1:
                best_of_sequences = [
                    {
                        "generated_text": text,
                        "finish_reason": reason,
                        "generated_tokens": generated,
                        "seed": seed,
                    }
                    for _ in range(best_of - 1)
                ]
            finished = True
            self.completed += 1
            yield {
                "type": "end",
                "generated_text": text,
                "finish_reason": reason,
                "prompt_tokens": len(words),
                "generated_tokens": generated,
                "seed": seed,
                "queue_time_s": queue_time,
                "inference_time_s": time.monotonic() - started - queue_time,
                "best_of_sequences": best_of_sequences,
            }
        finally:
            self.active -= 1
            if not finished:
                self.cancelled += 1

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[dict[str, Any]]:
        """One token per word, with character offsets."""
        out: list[dict[str, Any]] = []
        if add_special_tokens:
            out.append({"id": 1, "text": "<s>", "start": 0, "stop": 0})
        for match in _WORD.finditer(text):
            word = match.group(0)
            out.append(
                {"id": _token_id(word), "text": word, "start": match.start(), "stop": match.end()}
            )
        return out

    async def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        adapter_id: str | None,
        tools: Sequence[Mapping[str, Any]] | None,
    ) -> str:
        """A minimal ChatML-like template (an adapter gets its own marker, like its own template)."""
        head = f"<|adapter:{adapter_id}|>" if adapter_id else ""
        tool_text = f"<|tools|>{len(tools)}\n" if tools else ""
        body = "".join(f"<|{m.get('role')}|> {m.get('content') or ''}\n" for m in messages)
        return f"{head}{tool_text}{body}<|assistant|>"

    async def info(self) -> dict[str, Any]:
        """Model facts and limits."""
        cfg = self.config
        return {
            "model_id": cfg.model_id,
            "dtype": "float32",
            "device": "cpu",
            "max_input_length": cfg.max_input_length,
            "max_total_tokens": cfg.max_total_tokens,
            "max_best_of": cfg.max_best_of,
            "max_stop_sequences": cfg.max_stop_sequences,
            "adapters": list(cfg.adapters),
            "version": "synthetic",
        }

    async def health(self) -> bool:
        """Configurable, so tests can flip it."""
        return self.config.healthy

    async def metrics_texts(self) -> list[tuple[str, str]]:
        """Engine gauges in Prometheus text, like ``lorax-engine serve`` exposes them."""
        text = (
            "# HELP lorax_engine_batch_size Requests in the running batch.\n"
            "# TYPE lorax_engine_batch_size gauge\n"
            f"lorax_engine_batch_size {self.active}\n"
        )
        return [("synthetic", text)]


def _token(token_id: int, text: str, logprob: float, special: bool, k_alt: int) -> dict[str, Any]:
    token: dict[str, Any] = {"id": token_id, "text": text, "logprob": logprob, "special": special}
    if k_alt:
        token["alternative_tokens"] = [
            {"id": token_id + j + 1, "text": f"{text}~{j}", "logprob": logprob - 1.0 - j}
            for j in range(k_alt)
        ]
    return token


def _error(error_type: str, message: str) -> EngineEvent:
    return {"type": "error", "error": message, "error_type": error_type}
