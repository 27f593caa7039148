"""Per-request adapter merging: ``merged_adapters`` (docs/adapters.md, "Merged adapters").

The semantics are PEFT's ``add_weighted_adapter`` with ``combination_type`` ``linear``, ``ties``,
``dare_linear`` or ``dare_ties`` (which LoRAX also follows): for every module, the ``A`` matrices of
the adapters that target it are combined among themselves and so are the ``B`` matrices, with
adapter ``i`` weighted by ``sqrt(|w_i * s_i|)`` on both sides and the sign of ``w_i * s_i`` on A
(``s_i`` is its LoRA scale). The result has the components' rank and scale 1.
"""

from __future__ import annotations

import hashlib
import math

import torch

from lorax_engine.adapters.errors import AdapterIncompatibleError
from lorax_engine.adapters.ref import MergeSpec
from lorax_engine.adapters.weights import TARGET_ORDER, LoraWeights, ModuleKey


def merge_seed(merge_key: str) -> int:
    """A seed fixed by the merge request, so DARE's random drops give one result per request."""
    return int.from_bytes(hashlib.sha256(merge_key.encode()).digest()[:8], "little") & (
        (1 << 63) - 1
    )


def merge_adapters(
    adapter_key: str,
    components: list[LoraWeights],
    spec: MergeSpec,
    *,
    seed: int | None = None,
) -> LoraWeights:
    """Combine ``components`` (in ``spec.ids`` order) into one adapter named ``adapter_key``.

    DARE draws its random masks from a generator seeded with ``seed`` (default: derived from
    ``adapter_key``), module by module in decoder order, A before B, adapter by adapter: the order
    PEFT draws them from torch's global generator, so a PEFT merge after ``torch.manual_seed(seed)``
    gives the same tensors.
    """
    if len(components) != len(spec.weights):
        raise ValueError("one component per weight")
    ranks = {c.rank for c in components}
    if len(ranks) != 1:
        raise AdapterIncompatibleError(
            f"merged adapters must share one rank, got ranks {sorted(ranks)}",
            code="merge_rank_mismatch",
        )
    rank = ranks.pop()
    dtype = components[0].dtype
    gen = torch.Generator().manual_seed(merge_seed(adapter_key) if seed is None else seed)
    keys = sorted(
        {k for c in components for k in c.modules}, key=lambda k: (k[0], TARGET_ORDER.index(k[1]))
    )
    modules: dict[ModuleKey, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in keys:
        a_parts: list[torch.Tensor] = []
        b_parts: list[torch.Tensor] = []
        a_weights: list[float] = []
        b_weights: list[float] = []
        for comp, w in zip(components, spec.weights, strict=True):
            pair = comp.modules.get(key)
            if pair is None:  # PEFT skips an adapter that does not target this module
                continue
            ws = w * comp.scale
            root = math.sqrt(abs(ws))
            # The sign goes on one side only, or it would cancel out in B @ A.
            a_weights.append(root if ws >= 0 else -root)
            b_weights.append(root)
            a_parts.append(pair[0].to(torch.float32))
            b_parts.append(pair[1].to(torch.float32))
        a = _combine(a_parts, a_weights, spec, gen)  # [rank, in]
        b = _combine(b_parts, b_weights, spec, gen)  # [out, rank]
        modules[key] = (a.to(dtype).contiguous(), b.to(dtype).contiguous())
    return LoraWeights(adapter_key, rank, 1.0, modules)


def _combine(
    tensors: list[torch.Tensor], weights: list[float], spec: MergeSpec, gen: torch.Generator
) -> torch.Tensor:
    strategy, density = spec.merge_strategy, spec.density
    if strategy in ("ties", "dare_ties", "dare_linear") and density < 1.0:
        if strategy == "ties":
            tensors = [_magnitude_prune(t, density) for t in tensors]
        else:
            tensors = [_random_prune(t, density, gen) for t in tensors]
    stacked = torch.stack(tensors)  # [n, *shape]
    w = torch.tensor(weights, dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
    if strategy in ("linear", "dare_linear"):
        return (stacked * w).sum(dim=0)
    # TIES: elect a sign per entry from the (pruned, unweighted) tensors, keep only the entries
    # that agree with it, and average the weighted survivors.
    signs = stacked.sign()
    votes = stacked.sum(dim=0) if spec.majority_sign_method == "total" else signs.sum(dim=0)
    majority = torch.where(votes >= 0, 1.0, -1.0)
    agree = signs == majority  # [n, *shape]
    kept = (stacked * w * agree).sum(dim=0)
    return kept / agree.sum(dim=0).clamp(min=1)


def _magnitude_prune(t: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density * numel)`` entries of largest magnitude, zero the rest."""
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=t.dtype)
    mask[torch.topk(t.abs().reshape(-1), k=k, largest=True).indices] = 1
    return t * mask.view(t.shape)


def _random_prune(t: torch.Tensor, density: float, gen: torch.Generator) -> torch.Tensor:
    """DARE: keep each entry with probability ``density`` and rescale by ``1 / density``."""
    mask = torch.bernoulli(torch.full_like(t, density), generator=gen)
    return t * mask / density
