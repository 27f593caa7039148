"""Vectorized next-token selection for a batch of rows with heterogeneous parameters.

Order (as in TGI/LoRAX): repetition penalty, frequency/presence penalties, constraint bitmask,
then temperature, top-k, top-p, typical-p. Greedy and sampled rows share one pass; rows that do
not use an expensive stage (penalties, constraints, typical-p) skip it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from lorax_engine.params import SamplingParams
from lorax_kernels import greedy_logprob

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def seeded_uniforms(seeds: list[int], steps: list[int]) -> np.ndarray:
    """One uniform in [0, 1) per row from (seed, output index) with splitmix64.

    A function of the seed and position alone, so a seeded request samples the same tokens
    whatever else is in the batch, and again after a preemption recomputes it.
    """
    with np.errstate(over="ignore"):
        z = (
            np.array(seeds, dtype=np.uint64)
            + (np.array(steps, dtype=np.uint64) + np.uint64(1)) * _GOLDEN
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


@dataclass(slots=True)
class SamplingRow:
    """What the sampler needs about one row besides its logits."""

    params: SamplingParams
    token_ids: list[int]  # prompt + output so far (for penalties)
    num_prompt_tokens: int
    step: int  # index of the token being chosen among the outputs


class LogitsMask(Protocol):
    """The constrained rows' token masks of one step (`structured.PendingMasks`)."""

    def apply_(self, logits: torch.Tensor) -> None:
        """Set the disallowed tokens of the constrained rows of ``[rows, vocab]`` to -inf."""
        ...


@dataclass(slots=True, frozen=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float]
    # Per row, the top-k (id, logprob) alternatives when the row asked for them.
    alternatives: list[list[tuple[int, float]]]


class Sampler:
    """Turns ``[rows, vocab]`` logits (any float dtype, sampled in float32) into a token a row."""

    @torch.inference_mode()
    def __call__(
        self,
        logits: torch.Tensor,
        rows: list[SamplingRow],
        greedy: tuple[torch.Tensor, torch.Tensor] | None = None,
        masks: LogitsMask | None = None,
    ) -> SamplerOutput:
        """``greedy``: the argmax and its logprob per row, if the caller already has them (not
        valid for masked rows). ``masks``: the constrained rows' grammar masks, if any."""
        if masks is None and all(plain_greedy(r.params) for r in rows):
            return _greedy(logits, greedy)
        ids, lps, alternatives = self._choose(logits, rows, masks)
        alts: list[list[tuple[int, float]]] = [[] for _ in rows]
        if alternatives is not None:
            alt_lp, alt_ids = alternatives
            alt_id_list = alt_ids.tolist()
            alt_lp_list = alt_lp.tolist()
            for i, r in enumerate(rows):
                kk = r.params.return_k_alternatives
                alts[i] = list(zip(alt_id_list[i][:kk], alt_lp_list[i][:kk], strict=True))
        return SamplerOutput(ids.tolist(), lps.tolist(), alts)

    @torch.inference_mode()
    def on_device(
        self,
        logits: torch.Tensor,
        rows: list[SamplingRow],
        greedy: tuple[torch.Tensor, torch.Tensor] | None = None,
        masks: LogitsMask | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[rows]`` ids and logprobs left on the device, with no host sync, for rows that
        ``runs_on_device`` accepts (``masks`` waits for the grammar fill threads, not the GPU)."""
        if masks is None and all(plain_greedy(r.params) for r in rows):
            return greedy_on_device(logits, greedy)
        ids, lps, _ = self._choose(logits, rows, masks)
        return ids, lps

    @staticmethod
    def runs_on_device(params: SamplingParams) -> bool:
        """The row needs nothing from the host (no token history, no alternatives to list)."""
        return not params.has_penalties and params.return_k_alternatives == 0

    def _choose(
        self, logits: torch.Tensor, rows: list[SamplingRow], masks: LogitsMask | None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Device tensors: ids ``[rows]``, their logprobs ``[rows]``, and the top-k alternatives
        ``([rows, k] logprobs, [rows, k] ids)`` when a row asked for some. Every host-to-device
        copy is asynchronous, so nothing here waits for the GPU."""
        device = logits.device
        vocab = logits.shape[1]
        logits = logits.float()
        pen = [i for i, r in enumerate(rows) if r.params.has_penalties]
        if pen:
            logits[pen] = _apply_penalties(logits[pen], [rows[i] for i in pen], vocab)
        if masks is not None:
            masks.apply_(logits)  # waits for the fill threads; only the constrained rows change

        temps = _upload([1.0 if r.params.greedy else r.params.temperature for r in rows], device)
        scaled = logits / temps.unsqueeze(1)
        logprobs_all = torch.log_softmax(scaled, dim=-1)  # [rows, vocab]
        chosen = torch.argmax(logits, dim=-1)  # [rows]

        samp = [i for i, r in enumerate(rows) if not r.params.greedy]
        if samp:
            index = _upload_index(samp, device)
            chosen.index_copy_(
                0, index, _sample(scaled.index_select(0, index), [rows[i] for i in samp], device)
            )

        chosen_logprobs = logprobs_all.gather(1, chosen.unsqueeze(1)).squeeze(1)
        k = max(r.params.return_k_alternatives for r in rows)
        alternatives: tuple[torch.Tensor, torch.Tensor] | None = None
        if k > 0:
            alt_lp, alt_ids = logprobs_all.topk(min(k, vocab), dim=-1)
            alternatives = (alt_lp, alt_ids)
        return chosen, chosen_logprobs, alternatives


def _upload(values: list[float], device: torch.device) -> torch.Tensor:
    """A small host list of floats on the device as float32, without waiting for the stream."""
    return torch.from_numpy(np.array(values, dtype=np.float32)).to(device, non_blocking=True)


def _upload_index(values: list[int], device: torch.device) -> torch.Tensor:
    """A small host list of ints on the device as int64, without waiting for the stream."""
    return torch.from_numpy(np.array(values, dtype=np.int64)).to(device, non_blocking=True)


def plain_greedy(params: SamplingParams) -> bool:
    """The row's token is the argmax of its logits: it needs nothing from the host."""
    return params.greedy and not params.has_penalties and params.return_k_alternatives == 0


def greedy_on_device(
    logits: torch.Tensor, precomputed: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[rows]`` argmax ids and their logprobs, left on the device (``precomputed`` if given)."""
    if precomputed is not None:
        return precomputed
    return greedy_logprob(logits)


def _greedy(
    logits: torch.Tensor, precomputed: tuple[torch.Tensor, torch.Tensor] | None
) -> SamplerOutput:
    """Argmax rows: one small device-to-host copy for ids and logprobs together."""
    ids, lps = greedy_on_device(logits, precomputed)
    # float64 holds every vocabulary id exactly, so one transfer carries both.
    both = torch.stack([ids.double(), lps.double()]).cpu()
    return SamplerOutput(
        [int(i) for i in both[0].tolist()], both[1].tolist(), [[] for _ in range(len(both[0]))]
    )


def _apply_penalties(logits: torch.Tensor, rows: list[SamplingRow], vocab: int) -> torch.Tensor:
    """HF repetition penalty over prompt+output; OpenAI frequency/presence over the output."""
    device = logits.device
    seen_r: list[int] = []
    seen_t: list[int] = []
    out_r: list[int] = []
    out_t: list[int] = []
    for i, r in enumerate(rows):
        seen_r.extend([i] * len(r.token_ids))
        seen_t.extend(r.token_ids)
        outputs = r.token_ids[r.num_prompt_tokens :]
        out_r.extend([i] * len(outputs))
        out_t.extend(outputs)
    seen = torch.zeros(len(rows), vocab, dtype=torch.bool, device=device)
    seen[torch.tensor(seen_r, device=device), torch.tensor(seen_t, device=device)] = True
    counts = torch.zeros(len(rows), vocab, dtype=torch.float32, device=device)
    if out_t:
        counts.index_put_(
            (torch.tensor(out_r, device=device), torch.tensor(out_t, device=device)),
            torch.ones(len(out_t), device=device),
            accumulate=True,
        )
    rep = torch.tensor([r.params.repetition_penalty for r in rows], device=device).unsqueeze(1)
    freq = torch.tensor([r.params.frequency_penalty for r in rows], device=device).unsqueeze(1)
    pres = torch.tensor([r.params.presence_penalty for r in rows], device=device).unsqueeze(1)
    penalized = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalized, logits)
    return logits - freq * counts - pres * (counts > 0).float()


def _sample(scaled: torch.Tensor, rows: list[SamplingRow], device: torch.device) -> torch.Tensor:
    """Top-k, top-p, typical-p filtering on temperature-scaled logits, then inverse-CDF sampling."""
    vocab = scaled.shape[1]
    sorted_logits, sorted_idx = scaled.sort(dim=-1, descending=True)  # [n, vocab]
    positions = torch.arange(vocab, device=device).unsqueeze(0)
    top_k = _upload_index([r.params.top_k or vocab for r in rows], device).unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(positions >= top_k, float("-inf"))
    if any(r.params.top_p < 1.0 for r in rows):
        top_p = _upload([r.params.top_p for r in rows], device).unsqueeze(1)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly above each token
        sorted_logits = sorted_logits.masked_fill(before > top_p, float("-inf"))
    typ = [i for i, r in enumerate(rows) if r.params.typical_p < 1.0]
    if typ:
        index = _upload_index(typ, device)
        masses = [rows[i].params.typical_p for i in typ]
        sorted_logits.index_copy_(
            0, index, _typical(sorted_logits.index_select(0, index), masses, device)
        )
    probs = sorted_logits.softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)  # [n, vocab]
    u = seeded_uniforms([r.params.seed for r in rows], [r.step for r in rows])
    uniforms = torch.from_numpy(u).to(device, non_blocking=True).to(cdf.dtype)
    target = uniforms.unsqueeze(1) * cdf[:, -1:]
    pos = torch.searchsorted(cdf, target, right=True).clamp_(max=vocab - 1)
    # Never land on a filtered token when rounding puts the target at the very end.
    pos = torch.minimum(pos, (probs > 0).sum(dim=-1, keepdim=True) - 1)
    return sorted_idx.gather(1, pos).squeeze(1)


def _typical(
    sorted_logits: torch.Tensor, masses: list[float], device: torch.device
) -> torch.Tensor:
    """Keep the tokens whose surprise is closest to the entropy, up to ``mass`` (HF typical_p)."""
    logp = sorted_logits.log_softmax(dim=-1)
    p = logp.exp()
    entropy = -(p * logp).nan_to_num().sum(dim=-1, keepdim=True)
    shifted = (-logp - entropy).abs()
    order_vals, order = shifted.sort(dim=-1)
    cum = p.gather(1, order).cumsum(dim=-1)
    mass = _upload(masses, device).unsqueeze(1)
    last = (cum < mass).sum(dim=-1, keepdim=True).clamp_(max=sorted_logits.shape[1] - 1)
    cutoff = order_vals.gather(1, last)
    return sorted_logits.masked_fill(shifted > cutoff, float("-inf"))
