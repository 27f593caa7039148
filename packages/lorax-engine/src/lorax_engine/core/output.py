"""Turns sampled token ids of one request into the wire events of docs/internals.md section 2."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lorax_engine.core.detokenizer import IncrementalDetokenizer
from lorax_engine.core.request import Request
from lorax_engine.core.stop_matcher import PendingToken, StopMatcher

Event = dict[str, Any]
EventSink = Callable[[Event], object]


class RequestOutput:
    """Per-request detokenizer, stop matching and finish rules; calls ``sink`` with each event."""

    def __init__(
        self,
        request: Request,
        tokenizer: Any,
        special_ids: frozenset[int],
        eos_ids: frozenset[int],
        sink: EventSink,
    ) -> None:
        self.request = request
        self.tokenizer = tokenizer
        self.special_ids = special_ids
        self.eos_ids = eos_ids
        self.sink = sink
        self.detok = IncrementalDetokenizer(tokenizer, request.prompt_token_ids)
        self.stops = StopMatcher(request.params.stop)
        self.text_parts: list[str] = []
        self.token_details: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self._prefill_sent = False

    def _send_prefill(self) -> None:
        self._prefill_sent = True
        req = self.request
        if req.prompt_logprobs is None:
            return
        texts = [
            self.tokenizer.decode([t], skip_special_tokens=False) for t in req.prompt_token_ids
        ]
        tokens = [
            {"id": t, "text": txt, "logprob": lp}
            for t, txt, lp in zip(req.prompt_token_ids, texts, req.prompt_logprobs, strict=True)
        ]
        self.sink({"type": "prefill", "tokens": tokens})

    def on_token(
        self,
        token_id: int,
        logprob: float,
        alternatives: list[tuple[int, float]],
        document_complete: bool = False,
    ) -> bool:
        """Record one sampled token (already appended to the request). Returns True when finished.

        ``document_complete``: the request's constraint had a complete document before this
        token, so an EOS here ends it even with ``ignore_eos`` (padding a finished document with
        EOS until ``max_new_tokens`` would only waste the tokens).
        """
        if not self._prefill_sent:
            self._send_prefill()
        req = self.request
        special = token_id in self.special_ids
        text = "" if special else self.detok.push(token_id)
        alts = [
            (tid, self.tokenizer.decode([tid], skip_special_tokens=False), lp)
            for tid, lp in alternatives
        ]
        released = self.stops.push(PendingToken(token_id, text, logprob, special, alts))
        is_eos = token_id in self.eos_ids and (not req.params.ignore_eos or document_complete)
        if self.stops.stopped:
            self.finish_reason = "stop_sequence"
        elif is_eos:
            self.finish_reason = "eos_token"
        elif req.num_output_tokens >= req.params.max_new_tokens:
            self.finish_reason = "length"
        if self.finish_reason is not None and not self.stops.stopped:
            released += self.stops.flush()
        for tok in released:
            self._emit_token(tok)
        return self.finish_reason is not None

    def _emit_token(self, tok: PendingToken) -> None:
        text = tok.text
        if tok.special:
            text = self.tokenizer.decode([tok.token_id], skip_special_tokens=False)
        else:
            self.text_parts.append(text)
        token: dict[str, Any] = {
            "id": tok.token_id,
            "text": text,
            "logprob": tok.logprob,
            "special": tok.special,
        }
        if self.request.params.return_k_alternatives > 0:
            token["alternative_tokens"] = [
                {"id": i, "text": t, "logprob": lp} for i, t, lp in tok.alternatives
            ]
        self.token_details.append(token)
        self.sink({"type": "token", "token": token})

    @property
    def generated_text(self) -> str:
        return "".join(self.text_parts)

    def end_event(self) -> dict[str, Any]:
        req = self.request
        now = time.monotonic()
        started = req.first_scheduled_time or now
        return {
            "type": "end",
            "generated_text": self.generated_text,
            "finish_reason": self.finish_reason or "length",
            "prompt_tokens": req.num_prompt_tokens,
            "generated_tokens": req.num_output_tokens,
            "seed": None if req.params.greedy else req.params.seed,
            "queue_time_s": max(0.0, started - req.arrival_time),
            "inference_time_s": max(0.0, now - started),
            "best_of_sequences": None,
        }
