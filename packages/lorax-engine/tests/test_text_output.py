"""Incremental detokenization, stop sequences across tokens, and the request-output events."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lorax_engine.core.detokenizer import IncrementalDetokenizer
from lorax_engine.core.output import RequestOutput
from lorax_engine.core.request import Request
from lorax_engine.core.stop_matcher import PendingToken, StopMatcher
from lorax_engine.params import SamplingParams


@pytest.fixture(scope="module")
def tokenizer(make_checkpoint: Callable[[str], Path]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(make_checkpoint("llama")))


@pytest.mark.parametrize(
    "text",
    [
        "Hello world, how are you today?",
        "café naïve über",
        "日本語 🙂 emoji",
        "  two  spaces\nnewline",
    ],
)
def test_incremental_text_equals_full_decode(tokenizer: Any, text: str) -> None:
    prompt = tokenizer("The prompt")["input_ids"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer, prompt)
    pieces = [detok.push(t) for t in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)  # never half a UTF-8 character


def test_multibyte_character_is_held_until_complete(tokenizer: Any) -> None:
    ids = tokenizer("🙂", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1, "byte-level BPE splits the emoji"
    detok = IncrementalDetokenizer(tokenizer, [0])
    pieces = [detok.push(t) for t in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1)
    assert pieces[-1] == "🙂"


def _tok(i: int, text: str) -> PendingToken:
    return PendingToken(i, text, -0.1, False, [])


def test_stop_sequence_spanning_tokens_is_not_emitted() -> None:
    m = StopMatcher(("END",))
    out = []
    for i, t in enumerate(["Hello ", "E", "N", "D", "more"]):
        out += m.push(_tok(i, t))
        if m.stopped:
            break
    assert m.stopped
    assert "".join(t.text for t in out) == "Hello "
    assert [t.token_id for t in out] == [0, 1, 2, 3]  # every token is reported, stop text clipped


def test_false_stop_prefix_is_released() -> None:
    m = StopMatcher(("END",))
    assert [t.text for t in m.push(_tok(0, "a E"))] == []  # "E" may start the stop: held
    assert [t.text for t in m.push(_tok(1, "x"))] == ["a E", "x"]
    assert not m.stopped


def test_stop_in_the_middle_of_a_token_clips_it() -> None:
    m = StopMatcher(("\n\n",))
    out = m.push(_tok(0, "line\n\nrest"))
    assert m.stopped
    assert [t.text for t in out] == ["line"]


def _output(
    tokenizer: Any, prompt: list[int], **params: Any
) -> tuple[Request, RequestOutput, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    req = Request("r", prompt, SamplingParams(**params), 0.0)
    out = RequestOutput(
        req, tokenizer, frozenset(tokenizer.all_special_ids), frozenset([1]), events.append
    )
    return req, out, events


def _feed(req: Request, out: RequestOutput, ids: list[int]) -> bool:
    for t in ids:
        req.token_ids.append(t)
        if out.on_token(t, -0.5, []):
            return True
    return False


def test_eos_finishes_and_is_a_special_token_event(tokenizer: Any) -> None:
    req, out, events = _output(tokenizer, [0, 5], max_new_tokens=10)
    ids = tokenizer("hi there", add_special_tokens=False)["input_ids"]
    assert _feed(req, out, [*ids, 1])
    assert out.finish_reason == "eos_token"
    assert events[-1]["token"]["special"] is True
    assert out.generated_text == "hi there"
    end = out.end_event()
    assert end["generated_tokens"] == len(ids) + 1
    assert end["seed"] is None  # greedy


def test_ignore_eos_and_max_new_tokens(tokenizer: Any) -> None:
    req, out, _ = _output(tokenizer, [0, 5], max_new_tokens=3, ignore_eos=True)
    assert not _feed(req, out, [1, 1])
    assert _feed(req, out, [1])
    assert out.finish_reason == "length"


def test_stop_sequence_finish_reason_and_text(tokenizer: Any) -> None:
    req, out, events = _output(tokenizer, [0, 5], max_new_tokens=50, stop=["world"])
    ids = tokenizer("Hello world and more", add_special_tokens=False)["input_ids"]
    assert _feed(req, out, ids)
    assert out.finish_reason == "stop_sequence"
    assert out.generated_text == "Hello "
    assert "".join(e["token"]["text"] for e in events if e["type"] == "token") == "Hello "


def test_prefill_event_comes_first_with_prompt_logprobs(tokenizer: Any) -> None:
    req, out, events = _output(tokenizer, [0, 5, 6], max_new_tokens=2, decoder_input_details=True)
    assert req.prompt_logprobs is not None
    req.prompt_logprobs.extend([-1.0, -2.0])
    _feed(req, out, [7])
    assert events[0]["type"] == "prefill"
    assert [t["logprob"] for t in events[0]["tokens"]] == [None, -1.0, -2.0]
    assert [t["id"] for t in events[0]["tokens"]] == [0, 5, 6]
