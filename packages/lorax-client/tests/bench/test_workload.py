"""The seeded trace: reproducible, within its bounds, and replayable from JSONL."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections import Counter
from pathlib import Path

import pytest

from lorax.bench.workload import (
    AdapterPopularity,
    LengthDist,
    TraceRequest,
    WorkloadConfig,
    arrival_times,
    build_trace,
    load_trace,
    save_trace,
)


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    config = WorkloadConfig(num_requests=200, seed=7)
    assert build_trace(config) == build_trace(WorkloadConfig(num_requests=200, seed=7))
    other = build_trace(WorkloadConfig(num_requests=200, seed=8))
    assert [r.input_len for r in other] != [r.input_len for r in build_trace(config)]


def test_lengths_stay_in_their_bounds_and_cover_them() -> None:
    trace = build_trace(
        WorkloadConfig(num_requests=3000, input_len=LengthDist(8, 12), output_len=LengthDist(5, 5))
    )
    assert {r.input_len for r in trace} == set(range(8, 13))
    assert {r.output_len for r in trace} == {5}


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_gaps_have_mean_one_and_the_asked_cv(cv: float) -> None:
    trace = build_trace(WorkloadConfig(num_requests=40_000, arrival="gamma", cv=cv, seed=1))
    gaps = [r.unit_gap for r in trace]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1.0, rel=0.05)
    assert statistics.pstdev(gaps) / mean == pytest.approx(cv, rel=0.08)


def test_poisson_gaps_are_exponential() -> None:
    gaps = [r.unit_gap for r in build_trace(WorkloadConfig(num_requests=40_000, seed=2))]
    assert statistics.fmean(gaps) == pytest.approx(1.0, rel=0.03)
    assert statistics.pstdev(gaps) == pytest.approx(1.0, rel=0.05)
    # P(gap > 1) = e^-1 for an exponential of mean 1.
    assert sum(g > 1 for g in gaps) / len(gaps) == pytest.approx(math.exp(-1), abs=0.01)


def test_arrival_times_scale_with_the_rate() -> None:
    trace = build_trace(WorkloadConfig(num_requests=50, seed=3))
    slow, fast = arrival_times(trace, 1.0), arrival_times(trace, 4.0)
    assert fast == pytest.approx([t / 4 for t in slow])
    assert all(b >= a for a, b in itertools.pairwise(slow))
    assert arrival_times(trace, math.inf) == [0.0] * 50
    with pytest.raises(ValueError, match="arrival_s"):
        arrival_times(trace, 0)


def test_uniform_popularity_is_flat_and_zipf_is_skewed() -> None:
    trace = build_trace(WorkloadConfig(num_requests=20_000, seed=4))
    uniform = AdapterPopularity().picker(4)
    counts = Counter(uniform(r.adapter_u) for r in trace)
    assert sorted(counts) == [0, 1, 2, 3]
    assert all(c / len(trace) == pytest.approx(0.25, abs=0.015) for c in counts.values())

    zipf = AdapterPopularity("zipf", 1.0).picker(4)
    counts = Counter(zipf(r.adapter_u) for r in trace)
    harmonic = 1 + 1 / 2 + 1 / 3 + 1 / 4
    for i in range(4):
        assert counts[i] / len(trace) == pytest.approx(1 / (i + 1) / harmonic, abs=0.015)


def test_the_same_draw_picks_comparable_adapters_at_any_count() -> None:
    # The inverse CDF is monotone in u: a request keeps its relative place as N grows.
    pick8, pick2000 = AdapterPopularity().picker(8), AdapterPopularity().picker(2000)
    for u in (0.0, 0.1, 0.5, 0.99, 0.999999):
        assert pick8(u) == int(u * 8)
        assert pick2000(u) == int(u * 2000)
    zipf8, zipf2000 = AdapterPopularity("zipf").picker(8), AdapterPopularity("zipf").picker(2000)
    draws = [i / 1000 for i in range(1000)]
    assert [zipf8(u) for u in draws] == sorted(zipf8(u) for u in draws)
    assert [zipf2000(u) for u in draws] == sorted(zipf2000(u) for u in draws)
    assert zipf8(0.0) == zipf2000(0.0) == 0


def test_trace_round_trips_through_jsonl(tmp_path: Path) -> None:
    trace = build_trace(WorkloadConfig(num_requests=30, seed=5))
    path = tmp_path / "trace.jsonl"
    save_trace(trace, path)
    assert load_trace(path) == trace


def test_minimal_trace_lines_get_seeded_draws(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    lines = [
        {"input_len": 10, "output_len": 3},
        {"prompt": "one two three", "output_len": 4, "adapter_id": "x", "arrival_s": 0.5},
        {"input_len": 7, "output_len": 2, "adapter_id": None},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    first, second = load_trace(path, seed=1), load_trace(path, seed=1)
    assert first == second
    assert first[0].adapter_id is None  # drawn at each sweep point
    assert first[1] == TraceRequest(
        unit_gap=first[1].unit_gap,
        adapter_u=first[1].adapter_u,
        input_len=3,
        output_len=4,
        prompt_seed=first[1].prompt_seed,
        adapter_id="x",
        prompt="one two three",
        arrival_s=0.5,
    )
    assert first[2].adapter_id == ""  # null fixes the base model
    assert load_trace(path, seed=2)[0].unit_gap != first[0].unit_gap


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"input_len": 3}', "output_len"),
        ('{"output_len": 3}', "input_len"),
        ("[1, 2]", "not a JSON object"),
        ('{"input_len": 0, "output_len": 3}', ">= 1"),
    ],
)
def test_bad_trace_lines_name_their_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"input_len": 3, "output_len": 3}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"trace.jsonl:2: .*{message}"):
        load_trace(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("uniform:8:512", LengthDist(8, 512)),
        ("fixed:64", LengthDist(64, 64)),
        ("9", LengthDist(9, 9)),
    ],
)
def test_length_distributions_parse(text: str, expected: LengthDist) -> None:
    assert LengthDist.parse(text) == expected
    assert LengthDist.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["uniform:9:3", "normal:1:2", "fixed:x", "uniform:0:4", ""])
def test_bad_length_distributions_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"length|low"):
        LengthDist.parse(text)
