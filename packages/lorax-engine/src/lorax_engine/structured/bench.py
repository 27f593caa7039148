"""Mask cost per decode step: `python -m lorax_engine.structured.bench [--device cuda]`.

Builds a synthetic byte-level BPE of `--vocab` tokens (no download: merges of random pairs of
existing tokens, biased to letters, digits, blanks and JSON punctuation so the trie looks like a
real one) and runs a decode loop over `2 * --rows` rows of random logits, every other row under
a nested schema (a finished document starts over, so rows spread over every part of the
schema). Per step it times, separately: filling the constrained rows' masks on the MaskFiller's
CPU threads (for each `--threads`), copying and applying them to the logits on `--device`, and
accepting the sampled tokens. Prints one JSON line per thread count.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

import torch

from lorax_engine.structured.config import StructuredOutputConfig
from lorax_engine.structured.constraint import TokenConstraint
from lorax_engine.structured.factory import ConstraintFactory
from lorax_engine.structured.mask_filler import MaskFiller

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 8},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                "country": {"enum": ["US", "FR", "DE", "JP", "BR"]},
            },
            "required": ["city", "zip", "country"],
            "additionalProperties": False,
        },
        "note": {"anyOf": [{"type": "string", "maxLength": 80}, {"type": "null"}]},
    },
    "required": ["id", "name", "age", "score", "tags", "address", "note"],
    "additionalProperties": False,
}


def synthetic_tokenizer(vocab_size: int, seed: int = 0) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` with `vocab_size` tokens (EOS is id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    rng = random.Random(seed)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    base = sorted(alphabet)
    common = [c for c in base if c.isalnum() or c in 'Ġ{}[]":,._-']
    tokens: list[str] = ["<|eos|>", *base]
    seen = set(tokens)
    merges: list[tuple[str, str]] = []
    pool = list(common)
    while len(tokens) < vocab_size:
        left = rng.choice(pool)
        right = rng.choice(common) if rng.random() < 0.6 else rng.choice(pool)
        merged = left + right
        if merged in seen or len(merged) > 16:
            continue
        seen.add(merged)
        tokens.append(merged)
        merges.append((left, right))
        pool.append(merged)
    model = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|eos|>"])
    return tok


def run(vocab: int, rows: int, steps: int, threads: list[int], device: str) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    tokenizer = synthetic_tokenizer(vocab)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    factory = ConstraintFactory(
        tokenizer, StructuredOutputConfig(check_tokenizer=True), stop_token_ids=[0]
    )
    factory_s = time.perf_counter() - t0
    fmt = {"type": "json_schema", "schema": SCHEMA}
    t0 = time.perf_counter()
    factory.make(fmt)
    compile_s = time.perf_counter() - t0
    results: list[dict[str, Any]] = []
    for n_threads in threads:
        results.append(_decode(factory, fmt, rows, steps, n_threads, torch.device(device)))
    for r in results:
        r |= {
            "tokenizer_build_s": round(build_s, 2),
            "factory_start_s": round(factory_s, 2),
            "schema_compile_ms": round(compile_s * 1e3, 2),
        }
    return results


def _new(factory: ConstraintFactory, fmt: dict[str, Any]) -> TokenConstraint:
    c = factory.make(fmt)
    assert c is not None
    return c


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode(
    factory: ConstraintFactory,
    fmt: dict[str, Any],
    rows: int,
    steps: int,
    n_threads: int,
    device: torch.device,
) -> dict[str, Any]:
    """A decode loop over `2 * rows` rows, the even ones constrained; a finished document
    starts over, so the rows stay spread over every part of the schema."""
    gen = torch.Generator(device=device).manual_seed(n_threads)
    width = factory.mask_words * 32
    constraints = [_new(factory, fmt) for _ in range(rows)]
    filler = MaskFiller(factory.mask_words, max_rows=rows, num_threads=n_threads)
    fill_ms: list[float] = []
    apply_ms: list[float] = []
    accept_ms: list[float] = []
    for _ in range(steps):
        # Timed alone (nothing overlapping), so this is the CPU cost of one step's masks.
        t0 = time.perf_counter()
        pending = filler.start([(2 * i, c) for i, c in enumerate(constraints)])
        pending.wait()
        t1 = time.perf_counter()
        logits = torch.randn((2 * rows, width), generator=gen, device=device) * 3  # "forward"
        _sync(device)
        t2 = time.perf_counter()
        pending.apply_(logits)  # host-to-device copy + masking, timed to completion
        _sync(device)
        t3 = time.perf_counter()
        probs = torch.softmax(logits, -1)
        tokens = torch.multinomial(probs, 1, generator=gen).flatten().tolist()
        t4 = time.perf_counter()
        for i, c in enumerate(constraints):
            token = int(tokens[2 * i])
            if token == 0:  # stop: the document finished, start a new one in this row
                constraints[i] = _new(factory, fmt)
            elif not c.accept(token):
                raise AssertionError("sampled a token the mask disallowed")
        t5 = time.perf_counter()
        fill_ms.append((t1 - t0) * 1e3)
        apply_ms.append((t3 - t2) * 1e3)
        accept_ms.append((t5 - t4) * 1e3)
    filler.close()
    fill_ms.sort()
    return {
        "vocab": factory.vocab_size,
        "constrained_rows": rows,
        "threads": n_threads,
        "steps": steps,
        "fill_ms_p50": round(statistics.median(fill_ms), 3),
        "fill_ms_p99": round(fill_ms[int(0.99 * (len(fill_ms) - 1))], 3),
        "device": str(device),
        "apply_ms_p50": round(statistics.median(apply_ms), 3),
        "accept_ms_p50": round(statistics.median(accept_ms), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Mask-fill cost per decode step.")
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--rows", type=int, default=32, help="constrained rows per step")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    for line in run(args.vocab, args.rows, args.steps, args.threads, args.device):
        print(json.dumps(line))


if __name__ == "__main__":
    main()
