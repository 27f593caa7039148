"""Merged adapters equal the documented formulas and PEFT's ``add_weighted_adapter``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from lorax_engine.adapters import (
    AdapterIncompatibleError,
    AdapterRef,
    AdapterRequestError,
    LoadLimits,
    MergeSpec,
    load_peft_lora,
    merge_adapters,
)
from lorax_engine.adapters.weights import LoraWeights

from .conftest import ALL_TARGETS, Spec, base_model, peft_quiet


def _load(d: Path, spec: Spec, key: str) -> LoraWeights:
    return load_peft_lora(d, key, spec, LoadLimits())


def test_linear_is_the_documented_formula(make_adapter: Callable[..., Path], spec: Spec) -> None:
    a = _load(make_adapter(alpha=16, seed=1), spec, "a")
    b = _load(make_adapter(alpha=4, seed=2, targets=("q_proj", "v_proj")), spec, "b")
    weights = (0.7, -0.3)
    merged = merge_adapters("m", [a, b], MergeSpec(("a", "b"), weights))
    assert merged.scale == 1.0
    assert merged.rank == 8
    assert set(merged.modules) == set(a.modules)  # union of the targets
    for key, (ma, mb) in merged.modules.items():
        want_a = torch.zeros_like(ma)
        want_b = torch.zeros_like(mb)
        for comp, w in zip((a, b), weights, strict=True):
            if key in comp.modules:
                ws = w * comp.scale
                want_a += math.copysign(math.sqrt(abs(ws)), ws) * comp.modules[key][0]
                want_b += math.sqrt(abs(ws)) * comp.modules[key][1]
        torch.testing.assert_close(ma, want_a)
        torch.testing.assert_close(mb, want_b)


def test_a_single_adapter_at_weight_one_keeps_its_delta(
    make_adapter: Callable[..., Path], spec: Spec
) -> None:
    a = _load(make_adapter(alpha=16), spec, "a")
    merged = merge_adapters("m", [a], MergeSpec(("a",), (1.0,)))
    for key, (ma, mb) in merged.modules.items():
        ca, cb = a.modules[key]
        torch.testing.assert_close(merged.scale * (mb @ ma), a.scale * (cb @ ca))


def _peft_merge(
    dirs: list[Path],
    weights: list[float],
    combination: str,
    density: float,
    sign: str,
    gen_seed: int,
) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    """Run PEFT's add_weighted_adapter; DARE's torch.bernoulli draws from a seeded generator."""
    with peft_quiet():
        model: Any = PeftModel.from_pretrained(base_model(), str(dirs[0]), adapter_name="c0")
        for i, d in enumerate(dirs[1:], start=1):
            model.load_adapter(str(d), adapter_name=f"c{i}")
    gen = torch.Generator().manual_seed(gen_seed)
    real_bernoulli = torch.bernoulli

    def seeded_bernoulli(input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return real_bernoulli(input, generator=gen)

    names = [f"c{i}" for i in range(len(dirs))]
    with peft_quiet(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "bernoulli", seeded_bernoulli)
        model.add_weighted_adapter(
            names,
            weights,
            "m",
            combination_type=combination,
            density=density,
            majority_sign_method=sign,
        )
    out: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for layer_idx, layer in enumerate(model.base_model.model.model.layers):
        for target in ALL_TARGETS:
            block = (
                layer.self_attn if target in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
            )
            module = getattr(block, target)
            if hasattr(module, "lora_A") and "m" in module.lora_A:
                assert module.scaling["m"] == 1.0
                out[(layer_idx, target)] = (module.lora_A["m"].weight, module.lora_B["m"].weight)
    return out


@pytest.mark.parametrize(
    ("strategy", "density", "sign"),
    [
        ("linear", 1.0, "total"),
        ("ties", 0.5, "total"),
        ("ties", 0.3, "frequency"),
        ("dare_linear", 0.6, "total"),
        ("dare_ties", 0.5, "frequency"),
    ],
)
def test_matches_peft_add_weighted_adapter(
    make_adapter: Callable[..., Path], spec: Spec, strategy: str, density: float, sign: str
) -> None:
    dirs = [
        make_adapter(r=4, alpha=8, seed=1),
        make_adapter(r=4, alpha=16, seed=2),
        make_adapter(r=4, alpha=4, seed=3, use_rslora=True),
    ]
    weights = [0.5, 1.5, -0.8]
    comps = [_load(d, spec, f"c{i}") for i, d in enumerate(dirs)]
    ours = merge_adapters(
        "m",
        comps,
        MergeSpec(("c0", "c1", "c2"), tuple(weights), strategy, density, sign),
        seed=1234,
    )
    peft = _peft_merge(dirs, weights, strategy, density, sign, gen_seed=1234)
    assert set(ours.modules) == set(peft)
    for key, (a, b) in ours.modules.items():
        torch.testing.assert_close(a, peft[key][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, peft[key][1], rtol=1e-5, atol=1e-6)


def test_dare_is_reproducible_per_request(make_adapter: Callable[..., Path], spec: Spec) -> None:
    comps = [_load(make_adapter(seed=s), spec, f"c{s}") for s in (1, 2)]
    merge = MergeSpec(("c1", "c2"), (0.5, 0.5), "dare_ties", 0.5)
    first = merge_adapters("key-1", comps, merge)
    assert merge_adapters("key-1", comps, merge).equal(first)
    assert not merge_adapters("key-2", comps, merge).equal(first)


def test_ranks_must_match(make_adapter: Callable[..., Path], spec: Spec) -> None:
    comps = [_load(make_adapter(r=4), spec, "a"), _load(make_adapter(r=8), spec, "b")]
    with pytest.raises(AdapterIncompatibleError) as info:
        merge_adapters("m", comps, MergeSpec(("a", "b"), (1.0, 1.0)))
    assert info.value.code == "merge_rank_mismatch"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ids": (), "weights": ()},
        {"ids": ("a",), "weights": (1.0, 2.0)},
        {"ids": ("a",), "weights": (1.0,), "merge_strategy": "svd"},
        {"ids": ("a",), "weights": (1.0,), "density": 0.0},
        {"ids": ("a",), "weights": (1.0,), "majority_sign_method": "median"},
        {"ids": ("a",), "weights": (float("nan"),)},
    ],
)
def test_bad_merge_requests(kwargs: dict[str, Any]) -> None:
    with pytest.raises(AdapterRequestError):
        MergeSpec(**kwargs)


def test_merge_key_names_components_scopes_and_parameters() -> None:
    merge = MergeSpec(("x", "y"), (0.5, 0.5), "ties", 0.5)
    public = AdapterRef(merged=merge, source="local").cache_key()
    private = AdapterRef(merged=merge, source="local", api_token="t").cache_key()
    assert public != private
    assert "local:x#public" in public
    other = AdapterRef(merged=MergeSpec(("x", "y"), (0.5, 0.5), "ties", 0.6), source="local")
    assert other.cache_key() != public
    with pytest.raises(AdapterRequestError):
        AdapterRef("z", merged=merge)


def test_reference_from_request_parameters() -> None:
    ref = AdapterRef.from_parameters(
        {"adapter_id": "org/a@v1", "api_token": "hf_x"}, tenant="t", default_source="hub"
    )
    assert (ref.adapter_id, ref.source, ref.api_token, ref.tenant) == (
        "org/a@v1",
        "hub",
        "hf_x",
        "t",
    )
    assert AdapterRef.from_parameters(
        {"adapter_id": ""}, tenant=None, default_source="local"
    ).is_base
    assert AdapterRef.from_parameters({}, tenant=None, default_source="hub").is_base
    merged = AdapterRef.from_parameters(
        {
            "merged_adapters": {
                "ids": ["a", "b"],
                "weights": [1, 0.5],
                "merge_strategy": "dare_ties",
                "density": 0.3,
            },
            "adapter_source": "s3",
        },
        tenant=None,
        default_source="hub",
    )
    assert merged.source == "s3"
    assert merged.merged == MergeSpec(("a", "b"), (1.0, 0.5), "dare_ties", 0.3, "total")
    with pytest.raises(AdapterRequestError):
        AdapterRef.from_parameters(
            {"adapter_source": "pbase", "adapter_id": "x"}, tenant=None, default_source="hub"
        )
    with pytest.raises(AdapterRequestError):
        AdapterRef.from_parameters({"merged_adapters": [1]}, tenant=None, default_source="hub")
    with pytest.raises(AdapterRequestError):
        AdapterRef.from_parameters(
            {"merged_adapters": {"ids": ["a"], "weights": ["heavy"]}},
            tenant=None,
            default_source="hub",
        )
