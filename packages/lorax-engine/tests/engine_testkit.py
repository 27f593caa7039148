"""Test helpers: drive an EngineCore step by step and collect events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lorax_engine.config import EngineConfig
from lorax_engine.core.factory import LoadedEngine, load_engine
from lorax_engine.core.request import Request
from lorax_engine.params import Limits, SamplingParams


def make_engine(path: Path, **overrides: Any) -> LoadedEngine:
    limits = overrides.pop("limits", Limits(max_input_length=128, max_total_tokens=192))
    overrides.setdefault("device", "cpu")
    overrides.setdefault("dtype", "float32")
    cfg = EngineConfig(model_id=str(path), limits=limits, **overrides)
    return load_engine(cfg)


def hf_greedy(path: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    out = model.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt_ids) :].tolist()


class Collector:
    """Runs requests through ``core.step()`` and records their events."""

    def __init__(self, loaded: LoadedEngine) -> None:
        self.core = loaded.core
        self.events: dict[str, list[dict[str, Any]]] = {}

    def add(self, rid: str, prompt_ids: list[int], params: SamplingParams) -> Request:
        req = Request(rid, list(prompt_ids), params, arrival_time=0.0)
        self.events[rid] = []
        self.core.submit(req, self.events[rid].append)
        return req

    def done(self, rid: str) -> bool:
        evs = self.events[rid]
        return bool(evs) and evs[-1]["type"] in ("end", "error")

    def run(self, max_steps: int = 10_000) -> None:
        for _ in range(max_steps):
            if all(self.done(r) for r in self.events):
                return
            self.core.step()
        raise AssertionError("requests did not finish")

    def tokens(self, rid: str) -> list[int]:
        return [e["token"]["id"] for e in self.events[rid] if e["type"] == "token"]

    def end(self, rid: str) -> dict[str, Any]:
        return self.events[rid][-1]
