"""Test helpers: drive an EngineCore step by step and collect events; run a batch mixing
adapters on a running core; write random PEFT adapters; round adapter weights to fp8 as
``--lora-dtype fp8`` does, and base weights as ``--quantize fp8`` does."""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from lorax_engine.adapters import AdapterRef
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


@contextlib.contextmanager
def peft_quiet() -> Iterator[None]:
    with warnings.catch_warnings():  # PEFT reads a property this transformers deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


def save_random_lora(base: Path, out: Path, seed: int) -> None:
    """A rank-4 PEFT adapter of ``base`` on all seven projections, with a visible delta (so a
    dropped adapter changes the tokens), saved to ``out``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    torch.manual_seed(seed)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    with peft_quiet():
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.3)
        peft_model.save_pretrained(str(out))


def greedy_with_adapters(
    loaded: LoadedEngine,
    jobs: Sequence[tuple[str, list[int], str | None]],
    new_tokens: int,
    timeout_s: float = 120.0,
) -> dict[str, list[int]]:
    """The greedy tokens of each job ``(request id, prompt ids, local adapter or None)``, all
    submitted at once to the core running on its thread (one heterogeneous batch, adapters
    loaded by the manager's threads); every job must end without an error."""
    tokens: dict[str, list[int]] = {rid: [] for rid, _, _ in jobs}
    done = {rid: threading.Event() for rid, _, _ in jobs}
    last: dict[str, dict[str, Any]] = {}
    loaded.core.start()
    try:
        for rid, prompt, adapter in jobs:
            params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
            req = Request(rid, prompt, params, 0.0)
            req.adapter_ref = None if adapter is None else AdapterRef(adapter, source="local")

            def sink(event: dict[str, Any], rid: str = rid) -> None:
                if event["type"] == "token":
                    tokens[rid].append(event["token"]["id"])
                elif event["type"] in ("end", "error"):
                    last[rid] = event
                    done[rid].set()

            loaded.core.submit(req, sink)
        deadline = time.monotonic() + timeout_s
        for rid, event in done.items():
            assert event.wait(max(0.0, deadline - time.monotonic())), f"{rid} did not finish"
            assert last[rid]["type"] == "end", last[rid]
    finally:
        loaded.core.stop()
        if loaded.adapter_manager is not None:
            loaded.adapter_manager.shutdown()
    return tokens


def fp8_round_trip(tensors: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``tensors`` as ``--lora-dtype fp8`` slot tables hold them, written here from the rule, not
    from the engine's code: the A (or the B) of every slice of one fused projection in one layer
    share one float32 scale, their amax / 448 (1 when all are zero), and are stored divided by it
    and rounded to float8 e4m3. Returns the stored values times the scale (float32) and the scale.
    """
    amax = torch.stack([t.abs().amax() for t in tensors]).amax().float()
    scale = amax / 448.0 if amax > 0 else torch.ones(())
    return [(t.float() / scale).to(torch.float8_e4m3fn).float() * scale for t in tensors], scale


def fp8_rows_round_trip(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``[out, in]`` as ``--quantize fp8`` serves it, written here from the rule, not
    from the engine's code: each output row is divided by its own float32 scale, its amax / 448
    (floored at 1e-12 / 448 so zero rows stay zero), rounded to float8 e4m3, and multiplied back.
    Returns the float32 values the engine computes with."""
    w = weight.float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0  # [out, 1]
    return (w / scale).to(torch.float8_e4m3fn).float() * scale
