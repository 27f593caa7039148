"""On CUDA: promotion through the side stream into the real slot tables, eviction and return."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from engine_testkit import fp8_round_trip

import lorax_kernels
from lorax_engine.adapters import (
    AdapterLoader,
    AdapterManager,
    AdapterRef,
    AdapterState,
    HostAdapterCache,
    LoadLimits,
    LocalSource,
    LoraWeights,
    ManagerConfig,
    SourceRegistry,
)
from lorax_engine.lora import PEFT_TARGETS, PROJECTIONS, LoraSlots, ModelLoraSpec

from .conftest import Spec

pytestmark = pytest.mark.gpu


def _slot_holds(slots: LoraSlots, slot: int, weights: LoraWeights) -> bool:
    """Every module of ``weights`` sits bit-for-bit in ``slot`` of the device tables."""
    for (layer, target), (a, b) in weights.modules.items():
        projection, s = PEFT_TARGETS[target]
        table = slots.table(layer, projection)
        width = b.shape[0]
        got_a = table.lora_a[s, slot, : weights.rank].cpu()
        got_b = table.lora_b[s, slot, :width, : weights.rank].cpu()
        if not (torch.equal(got_a, a) and torch.equal(got_b, b)):
            return False
    return True


def test_side_stream_promotion_and_round_trip(
    tmp_path: Path, make_adapter: Callable[..., Path], spec: Spec
) -> None:
    for i, name in enumerate("abc"):
        make_adapter(name, r=4 + 4 * i, seed=i)
    model_spec = ModelLoraSpec(spec.architecture, spec.num_layers, dict(spec.targets))
    slots = LoraSlots.allocate(model_spec, 2, 16, torch.float32, "cuda")
    cache = HostAdapterCache(1 << 30)
    loader = AdapterLoader(
        SourceRegistry({"local": LocalSource([tmp_path])}),
        model_spec,
        LoadLimits(max_rank=16),
        cache,
    )
    manager = AdapterManager(
        loader, slots, ManagerConfig(num_slots=2, cycle_time_s=0.0), device="cuda"
    )

    def ready(name: str) -> tuple[int, LoraWeights]:
        h = manager.request(AdapterRef(name, source="local"))
        deadline = time.monotonic() + 60
        while manager.state(h) is not AdapterState.READY:
            assert manager.state(h) is not AdapterState.FAILED, manager.error(h)
            assert time.monotonic() < deadline
            manager.step()
            time.sleep(0.001)
        slot = manager.acquire(h)
        owner = manager._owners[slot]
        assert owner is not None
        assert owner.weights is not None
        assert owner.weights.is_pinned  # so the promotion copy was asynchronous
        manager.release(h)
        return slot, owner.weights

    slot_a, weights_a = ready("a")
    torch.cuda.synchronize()
    assert _slot_holds(slots, slot_a, weights_a)
    ready("b")
    ready("c")  # two slots, three adapters: a is evicted back to the CPU tier
    assert AdapterRef("a", source="local").cache_key() in cache
    slot_a2, weights_a2 = ready("a")
    torch.cuda.synchronize()
    assert weights_a2.equal(weights_a)
    assert _slot_holds(slots, slot_a2, weights_a)
    assert manager.stats["evictions"] >= 2
    manager.shutdown()


def test_host_cache_pins_memory() -> None:
    cache = HostAdapterCache(1 << 20)
    stored = cache.put(
        LoraWeights("k", 2, 1.0, {(0, "q_proj"): (torch.ones(2, 8), torch.ones(8, 2))})
    )
    assert stored.is_pinned


def _random_weights(spec: ModelLoraSpec, key: str, rank: int, seed: int) -> LoraWeights:
    gen = torch.Generator().manual_seed(seed)
    modules = {
        (layer, t): (torch.randn(rank, fin, generator=gen), torch.randn(fout, rank, generator=gen))
        for layer in range(spec.num_layers)
        for t, (fin, fout) in spec.targets.items()
    }
    return LoraWeights(key, rank, 0.5, modules)


def _mixed_batch(tokens: int, num_slots: int, gen: torch.Generator) -> lorax_kernels.LoraBatchMeta:
    """Batch metadata of ``tokens`` tokens on random slots, some without adapter (-1)."""
    token_slots = torch.randint(-1, num_slots, (tokens,), generator=gen, dtype=torch.int32)
    meta = lorax_kernels.LoraBatchMeta.allocate(64, num_slots, torch.device("cuda"))
    meta.update_(token_slots.cuda())
    return meta


def test_strided_slot_views_give_the_kernels_the_same_result_as_contiguous_tables(
    spec: Spec,
) -> None:
    model_spec = ModelLoraSpec(spec.architecture, spec.num_layers, dict(spec.targets))
    slots = LoraSlots.allocate(model_spec, 4, 16, torch.float32, "cuda")
    for slot, rank in enumerate((16, 4, 8)):
        slots.write_(slot, _random_weights(model_spec, f"w{slot}", rank, slot).pin_memory())
    torch.cuda.synchronize()
    gen = torch.Generator().manual_seed(0)
    tokens = 37
    meta = _mixed_batch(tokens, 4, gen)
    for layer in range(model_spec.num_layers):
        for proj in PROJECTIONS:
            t = slots.table(layer, proj)
            x = torch.randn(tokens, t.in_features, generator=gen).cuda()
            tiled, fused = [], []
            for a, b in ((t.lora_a, t.lora_b), (t.lora_a.contiguous(), t.lora_b.contiguous())):
                y = torch.zeros(tokens, t.slice_offsets[-1], device="cuda")
                h = lorax_kernels.lora_shrink(x, a, t.slot_ranks, meta)
                lorax_kernels.lora_expand_(
                    y, h, b, t.slot_ranks, t.slot_scales, t.slice_offsets, meta
                )
                tiled.append(y)
                y = torch.zeros(tokens, t.slice_offsets[-1], device="cuda")
                # The decoder's op; at this many rows its fused one-launch kernel.
                lorax_kernels.lora_apply_(
                    y, x, a, b, t.slot_ranks, t.slot_scales, t.slice_offsets, meta
                )
                fused.append(y)
            assert tiled[0].abs().sum() > 0
            assert torch.equal(tiled[0], tiled[1]), (layer, proj)
            assert torch.equal(fused[0], fused[1]), (layer, proj)
            torch.testing.assert_close(fused[0], tiled[0], rtol=1e-4, atol=1e-4)


def _fp8_round_trip(spec: ModelLoraSpec, w: LoraWeights) -> LoraWeights:
    """``w`` with every layer's fused projection replaced by its fp8 round trip (float32)."""
    modules = dict(w.modules)
    for layer in range(spec.num_layers):
        for names in PROJECTIONS.values():
            a, _ = fp8_round_trip([w.modules[(layer, n)][0] for n in names])
            b, _ = fp8_round_trip([w.modules[(layer, n)][1] for n in names])
            for n, a_n, b_n in zip(names, a, b, strict=True):
                modules[(layer, n)] = (a_n, b_n)
    return LoraWeights(w.adapter_key, w.rank, w.scale, modules)


def test_fp8_tables_are_written_without_host_sync_and_read_as_the_round_trip(
    spec: Spec,
) -> None:
    """``--lora-dtype fp8``: writing pinned bfloat16 weights never waits for the device, and the
    kernels' result on the fp8 tables is their result on tables of the round trip in the
    activations' dtype (float32; bfloat16, as the engine runs, rounds the round trip)."""
    model_spec = ModelLoraSpec(spec.architecture, spec.num_layers, dict(spec.targets))
    fp8 = LoraSlots.allocate(model_spec, 4, 16, torch.float8_e4m3fn, "cuda")
    refs = {
        dtype: LoraSlots.allocate(model_spec, 4, 16, dtype, "cuda")
        for dtype in (torch.float32, torch.bfloat16)
    }
    for slot, rank in enumerate((16, 4, 8)):
        w = _random_weights(model_spec, f"w{slot}", rank, slot)
        bf16 = {k: (a.bfloat16(), b.bfloat16()) for k, (a, b) in w.modules.items()}
        w = LoraWeights(w.adapter_key, rank, w.scale, bf16).pin_memory()
        torch.cuda.set_sync_debug_mode("error")  # the promoter thread must not wait
        try:
            fp8.write_(slot, w)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        round_trip = _fp8_round_trip(model_spec, w)
        for ref in refs.values():
            ref.write_(slot, round_trip)
    torch.cuda.synchronize()
    gen = torch.Generator().manual_seed(0)
    tokens = 37
    meta = _mixed_batch(tokens, 4, gen)
    keys = [(layer, proj) for layer in range(model_spec.num_layers) for proj in PROJECTIONS]
    for dtype, rtol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        for layer, proj in keys:
            ref = refs[dtype].table(layer, proj)
            x = torch.randn(tokens, ref.in_features, generator=gen).to("cuda", dtype)
            tiled, fused = [], []
            for t in (fp8.table(layer, proj), ref):
                y = torch.zeros(tokens, t.slice_offsets[-1], device="cuda", dtype=dtype)
                h = lorax_kernels.lora_shrink(x, t.lora_a, t.slot_ranks, meta)
                lorax_kernels.lora_expand_(
                    y, h, t.lora_b, t.slot_ranks, t.slot_scales, t.slice_offsets, meta
                )
                tiled.append(y)
                y = torch.zeros(tokens, t.slice_offsets[-1], device="cuda", dtype=dtype)
                lorax_kernels.lora_apply_(
                    y, x, t.lora_a, t.lora_b, t.slot_ranks, t.slot_scales, t.slice_offsets, meta
                )
                fused.append(y)
            assert tiled[1].abs().sum() > 0
            for got, want in (tiled, fused):
                tol = rtol * float(want.abs().max())
                where = f"{dtype} {layer} {proj}: "
                torch.testing.assert_close(
                    got, want, rtol=rtol, atol=tol, msg=lambda m, where=where: where + m
                )


def test_a_slot_is_never_rewritten_under_a_step_still_reading_it(spec: Spec) -> None:
    """Promotions evict slots whose last reader is still queued on the main stream (held back by
    a GPU sleep): every read must still see the adapter it was given, bit for bit."""
    model_spec = ModelLoraSpec(spec.architecture, spec.num_layers, dict(spec.targets))
    num_slots, count = 4, 24
    slots = LoraSlots.allocate(model_spec, num_slots, 8, torch.float32, "cuda")
    cache = HostAdapterCache(1 << 34)
    host: dict[str, LoraWeights] = {}
    for i in range(count):
        key = AdapterRef(f"a{i}", source="local").cache_key()
        host[key] = cache.put(_random_weights(model_spec, key, 8, 100 + i))
    loader = AdapterLoader(SourceRegistry({}), model_spec, LoadLimits(max_rank=8), cache)
    manager = AdapterManager(
        loader, slots, ManagerConfig(num_slots=num_slots, cycle_time_s=0.0), device="cuda"
    )
    table = slots.table(model_spec.num_layers - 1, "down")
    x = torch.randn(1, table.in_features, device="cuda")
    meta = lorax_kernels.LoraBatchMeta.allocate(1, num_slots, torch.device("cuda"))
    reads: list[tuple[str, torch.Tensor]] = []
    rng = random.Random(0)
    order = [rng.randrange(count) for _ in range(60)]
    for i in order:
        h = manager.request(AdapterRef(f"a{i}", source="local"))
        deadline = time.monotonic() + 60
        while manager.state(h) is not AdapterState.READY:
            assert time.monotonic() < deadline
            manager.step()
        slot = manager.acquire(h)
        torch.cuda._sleep(2_000_000)  # the main stream lags: the read below runs late
        meta.update_(torch.tensor([slot], dtype=torch.int32, device="cuda"))
        reads.append((h.key, lorax_kernels.lora_shrink(x, table.lora_a, table.slot_ranks, meta)))
        manager.release(h)  # evictable at once, while the read is still queued
    torch.cuda.synchronize()
    assert manager.stats["evictions"] > 10
    layer = model_spec.num_layers - 1
    for key, got in reads:
        a, _ = host[key].modules[(layer, "down_proj")]
        want = x.cpu() @ a.T  # [1, rank]
        torch.testing.assert_close(got[0, :, :8].cpu(), want, rtol=1e-5, atol=1e-5)
    manager.shutdown()
