"""Property tests: random arrivals, cancellations and finishes never leak or double-free a KV block,
and every admitted request that is not cancelled finishes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorax_engine.core.block_manager import BlockManager
from lorax_engine.core.request import Request, RequestStatus
from lorax_engine.core.scheduler import Scheduler, SchedulerConfig
from lorax_engine.params import SamplingParams

MAX_TOTAL = 48  # tokens per request (prompt + new), as the engine's validation guarantees

ops = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.integers(1, 40), st.integers(1, 8)),
        st.tuples(st.just("cancel"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("eos"), st.integers(0, 50), st.just(0)),
        st.tuples(st.just("step"), st.integers(1, 4), st.just(0)),
    ),
    max_size=60,
)


def _check(sched: Scheduler, live: list[Request], cancelled: list[Request]) -> None:
    blocks = sched.blocks
    blocks.check_invariants()
    # A cancelled request keeps its blocks until the next schedule() frees them.
    owned = [b for r in live + cancelled for b in r.block_ids]
    assert len(owned) == len(set(owned)), "a block is owned twice"
    assert len(owned) == blocks.num_used_blocks, "leaked blocks"
    for r in live:
        if r.status is RequestStatus.WAITING:
            assert r.num_computed_tokens == 0 or r.block_ids
        assert blocks.blocks_for(r.num_computed_tokens) <= len(r.block_ids)


def _step(sched: Scheduler, live: list[Request], finished: list[Request]) -> None:
    out = sched.schedule()
    assert out.num_tokens <= sched.config.max_batch_prefill_tokens
    assert len(sched.running) <= sched.config.max_batch_size
    for c in out.chunks:
        req = c.request
        assert c.start == req.num_computed_tokens
        assert len(req.block_ids) * sched.blocks.block_size >= c.start + c.num_tokens
        req.num_computed_tokens += c.num_tokens
        if c.samples:
            req.token_ids.append(7)
            if req.num_output_tokens >= req.params.max_new_tokens:
                sched.finish(req)
                live.remove(req)
                finished.append(req)
    for r in out.aborted:
        assert not r.block_ids


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=ops,
    num_blocks=st.integers(6, 20),
    block_size=st.sampled_from([4, 8]),
    budget=st.integers(4, 32),
    max_batch=st.integers(1, 6),
)
def test_random_traffic_never_leaks_and_always_finishes(
    ops: list[tuple[str, int, int]], num_blocks: int, block_size: int, budget: int, max_batch: int
) -> None:
    # The pool always holds one full-length request, as the engine checks at startup.
    num_blocks = max(num_blocks, -(-MAX_TOTAL // block_size))
    sched = Scheduler(
        SchedulerConfig(max_batch_prefill_tokens=max(budget, max_batch), max_batch_size=max_batch),
        BlockManager(num_blocks, block_size),
    )
    live: list[Request] = []
    finished: list[Request] = []
    cancelled: list[Request] = []
    n = 0
    for op, a, b in ops:
        if op == "arrive":
            prompt = min(a, MAX_TOTAL - b)
            req = Request(f"r{n}", [1] * prompt, SamplingParams(max_new_tokens=b), 0.0)
            n += 1
            sched.add(req)
            live.append(req)
        elif op == "cancel" and live:
            req = live.pop(a % len(live))
            sched.abort(req)
            cancelled.append(req)
        elif op == "eos" and live:
            req = live[a % len(live)]
            if req.status is RequestStatus.RUNNING and req.num_output_tokens > 0:
                sched.finish(req)
                live.remove(req)
                finished.append(req)
        elif op == "step":
            for _ in range(a):
                _step(sched, live, finished)
        _check(sched, live, cancelled)
    # Drain: every live request must finish in bounded time.
    for _ in range(2000):
        if not sched.has_work:
            break
        _step(sched, live, finished)
        _check(sched, live, cancelled)
    assert not live, f"{len(live)} requests never finished"
    assert sched.blocks.num_used_blocks == 0
    assert all(not r.block_ids for r in cancelled)


def test_block_manager_refcounts_share_and_free() -> None:
    bm = BlockManager(4, 2)
    a: list[int] = []
    bm.grow(a, 3)
    assert len(a) == 2
    assert bm.num_free_blocks == 2
    b = bm.share(a)
    bm.free(a)
    assert bm.num_free_blocks == 2  # still owned by b
    bm.free(b)
    assert bm.num_free_blocks == 4
    bm.check_invariants()
    c: list[int] = []
    bm.grow(c, 1)
    stale = list(c)
    bm.free(c)
    with pytest.raises(RuntimeError, match="double free"):
        bm.free(stale)
