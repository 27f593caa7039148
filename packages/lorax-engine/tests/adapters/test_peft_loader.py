"""PEFT adapters load to PEFT's own weights; every bad adapter fails with its own error."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorax_engine.adapters import (
    AdapterError,
    AdapterIncompatibleError,
    AdapterLoadError,
    LoadLimits,
    load_peft_lora,
)
from lorax_engine.adapters.peft_loader import WEIGHTS_NAME

from .conftest import Spec, make_peft_adapter, peft_quiet, spec_for


def _peft_layer(peft_model, layer: int, target: str):
    block = "self_attn" if target in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return getattr(getattr(peft_model.base_model.model.model.layers[layer], block), target)


@pytest.mark.parametrize(
    ("r", "alpha", "targets", "rslora"),
    [
        (4, 8, ("q_proj", "v_proj"), False),
        (
            8,
            16,
            ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
            False,
        ),
        (16, 7, ("o_proj", "down_proj"), True),
    ],
)
def test_loads_peft_weights_exactly(tmp_path: Path, spec: Spec, r, alpha, targets, rslora) -> None:
    peft_model = make_peft_adapter(
        tmp_path / "a", r=r, alpha=alpha, targets=targets, use_rslora=rslora
    )
    weights = load_peft_lora(tmp_path / "a", "key", spec, LoadLimits(max_rank=16))
    assert weights.rank == r
    assert weights.scale == pytest.approx(alpha / math.sqrt(r) if rslora else alpha / r)
    assert set(weights.modules) == {(layer, t) for layer in range(2) for t in targets}
    for (layer, target), (a, b) in weights.modules.items():
        lora = _peft_layer(peft_model, layer, target)
        assert torch.equal(a, lora.lora_A["default"].weight)
        assert torch.equal(b, lora.lora_B["default"].weight)
        assert weights.scale == pytest.approx(lora.scaling["default"])
    assert weights.nbytes == sum(a.nbytes + b.nbytes for a, b in weights.modules.values())


def test_rank_and_alpha_patterns_keep_each_modules_delta(tmp_path: Path, spec: Spec) -> None:
    peft_model = make_peft_adapter(
        tmp_path / "a",
        r=4,
        alpha=8,
        targets=("q_proj", "v_proj", "down_proj"),
        rank_pattern={"v_proj": 8},
        alpha_pattern={"down_proj": 2},
    )
    weights = load_peft_lora(tmp_path / "a", "key", spec, LoadLimits())
    assert weights.rank == 8
    for (layer, target), (a, b) in weights.modules.items():
        assert a.shape[0] == b.shape[1] == 8  # padded to the adapter's rank
        expected = _peft_layer(peft_model, layer, target).get_delta_weight("default")
        torch.testing.assert_close(weights.scale * (b @ a), expected)


def test_casts_to_the_requested_dtype(tmp_path: Path, spec: Spec) -> None:
    make_peft_adapter(tmp_path / "a")
    weights = load_peft_lora(tmp_path / "a", "key", spec, LoadLimits(), torch.bfloat16)
    assert weights.dtype == torch.bfloat16


def _expect(
    kind: type[AdapterError], code: str, directory: Path, spec, limits=None
) -> AdapterError:
    with pytest.raises(kind) as info:
        load_peft_lora(directory, "key", spec, limits or LoadLimits(), display_name="org/bad")
    assert info.value.code == code
    assert "org/bad" in str(info.value)
    return info.value


def test_missing_config(tmp_path: Path, spec: Spec) -> None:
    tmp_path.joinpath("a").mkdir()
    _expect(AdapterLoadError, "missing_config", tmp_path / "a", spec)


def test_corrupt_config(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter()
    (d / "adapter_config.json").write_text("{not json")
    _expect(AdapterLoadError, "corrupt_config", d, spec)


def test_missing_weights(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter()
    (d / WEIGHTS_NAME).unlink()
    _expect(AdapterLoadError, "missing_weights", d, spec)


def test_pickles_are_refused(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter()
    torch.save(load_file(str(d / WEIGHTS_NAME)), d / "adapter_model.bin")
    (d / WEIGHTS_NAME).unlink()
    err = _expect(AdapterLoadError, "pickle_refused", d, spec)
    assert (err.error_type, err.status) == ("generation", 424)


def test_corrupt_weights(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter()
    (d / WEIGHTS_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage-not-a-header")
    _expect(AdapterLoadError, "corrupt_weights", d, spec)


def test_non_finite_weights(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter()
    tensors = load_file(str(d / WEIGHTS_NAME))
    first = next(iter(tensors))
    tensors[first][0, 0] = float("nan")
    save_file(tensors, str(d / WEIGHTS_NAME))
    _expect(AdapterLoadError, "corrupt_weights", d, spec)


def test_missing_half_of_a_pair(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter()
    tensors = load_file(str(d / WEIGHTS_NAME))
    del tensors[next(k for k in tensors if "lora_B" in k)]
    save_file(tensors, str(d / WEIGHTS_NAME))
    _expect(AdapterLoadError, "corrupt_weights", d, spec)


def test_shape_mismatch_with_the_base_model(make_adapter: Callable[..., Path]) -> None:
    d = make_adapter(hidden=64)  # trained on a wider model
    err = _expect(AdapterIncompatibleError, "shape_mismatch", d, spec_for())
    assert (err.error_type, err.status) == ("validation", 422)


def test_more_layers_than_the_base_model(make_adapter: Callable[..., Path]) -> None:
    d = make_adapter(layers=3)
    _expect(AdapterIncompatibleError, "architecture_mismatch", d, spec_for())


def test_other_architecture(tmp_path: Path, spec: Spec) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=4,
            vocab_size=64,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    config = LoraConfig(
        r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False
    )
    with peft_quiet():
        get_peft_model(gpt2, config).save_pretrained(str(tmp_path / "gpt2"))
    _expect(AdapterIncompatibleError, "architecture_mismatch", tmp_path / "gpt2", spec)


def test_target_the_model_cannot_apply(make_adapter: Callable[..., Path]) -> None:
    d = make_adapter(targets=("q_proj", "gate_proj"))
    attention_only = spec_for()
    attention_only.targets.pop("gate_proj")
    _expect(AdapterIncompatibleError, "unsupported_target", d, attention_only)


def test_lm_head_target(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter(targets=("q_proj", "lm_head"))
    _expect(AdapterIncompatibleError, "unsupported_target", d, spec)


def test_modules_to_save(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter(targets=("q_proj",), modules_to_save=["lm_head"])
    _expect(AdapterIncompatibleError, "unsupported_target", d, spec)


def test_dora(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter(targets=("q_proj",), use_dora=True)
    _expect(AdapterIncompatibleError, "unsupported_adapter_type", d, spec)


def test_not_lora(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter()
    config = json.loads((d / "adapter_config.json").read_text())
    config["peft_type"] = "IA3"
    (d / "adapter_config.json").write_text(json.dumps(config))
    _expect(AdapterIncompatibleError, "unsupported_adapter_type", d, spec)


def test_rank_above_the_limit(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter(r=16)
    _expect(AdapterIncompatibleError, "rank_too_large", d, spec, LoadLimits(max_rank=8))


def test_size_above_the_limit(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter()
    _expect(AdapterIncompatibleError, "too_large", d, spec, LoadLimits(max_bytes=1024))


def test_config_rank_disagrees_with_tensors(make_adapter: Callable[..., Path], spec: Spec) -> None:
    d = make_adapter(r=8)
    config = json.loads((d / "adapter_config.json").read_text())
    config["r"] = 4
    (d / "adapter_config.json").write_text(json.dumps(config))
    _expect(AdapterIncompatibleError, "shape_mismatch", d, spec)
