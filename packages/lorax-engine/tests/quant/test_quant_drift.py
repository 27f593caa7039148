"""``benchmarks/bench_quant_drift.py``'s measurement on two prompts of the demo model.

The benchmark's numbers go into docs/benchmarks.md: its parts must measure what they say. fp8
keeps about 3 mantissa bits per weight with a scale per output channel, NF4 16 levels per block
of 64, so fp8 must drift less; on the full prompt set fp8's KL is about a tenth of NF4's.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lorax_engine.demo import build_demo
from lorax_engine.models.model_config import ModelConfig

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks/bench_quant_drift.py"
NEW = 8


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    # The script imports its sibling bench_common, as it does when run from its folder.
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_quant_drift", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo(tmp_path_factory.mktemp("cache"))


def test_fp8_drifts_less_than_nf4_and_the_reference_not_at_all(
    bench: ModuleType, demo_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    model_dir = demo_dir
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = [tok.encode(p) for p in bench.PROMPTS[:2]]
    methods = ["fp8", "bitsandbytes-nf4"]
    reference, results = bench.measure(model_dir, methods, prompts, 32, NEW, tmp_path / "work")
    vocab = ModelConfig.from_dir(model_dir).vocab_size
    assert [tuple(r.logprobs.shape) for r in reference] == [(len(p), vocab) for p in prompts]
    assert all(len(r.greedy) == NEW for r in reference)

    same = bench.drift(reference, reference)
    assert same.mean_kl == 0.0
    assert same.top1_agreement == same.greedy_agreement == 1.0
    assert same.positions == sum(len(p) for p in prompts)

    fp8, nf4 = results["fp8"], results["bitsandbytes-nf4"]
    assert 0.0 < fp8.mean_kl < nf4.mean_kl
    assert fp8.top1_agreement > nf4.top1_agreement


def test_group_size_falls_back_to_one_that_splits_every_projection(
    bench: ModuleType, demo_dir: Path
) -> None:
    cfg = ModelConfig.from_dir(demo_dir)
    assert (cfg.hidden_size, cfg.intermediate_size) == (64, 128)
    assert bench.fitting_group(cfg, 128) == 32  # 64 would leave the 64-wide inputs one group
    assert bench.fitting_group(cfg, 16) == 16
