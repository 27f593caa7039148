"""The workload model: a seeded trace of requests, replayed at any rate and any adapter count.

A trace is a list of :class:`TraceRequest`. Each one carries the *random draws* rather than their
result for a given sweep point, so one trace serves every point of a sweep and every system under
test:

- ``unit_gap``: the gap before this arrival in a process of rate 1 (mean 1). At rate ``r`` the
  gap is ``unit_gap / r``; ``inf`` sends everything at once. Poisson gaps are exponential; gamma
  gaps have shape ``1 / cv**2`` (cv = 1 is Poisson, larger cv is burstier).
- ``adapter_u``: a uniform number in [0, 1) turned into an adapter index by the popularity
  distribution's inverse CDF over ``N`` adapters, so the same request picks comparable adapters
  at N = 8 and N = 2000.
- ``input_len`` / ``output_len``: token counts; ``output_len`` is sent as ``max_new_tokens`` with
  EOS ignored, so it is exact.
- ``prompt_seed``: seeds the words of the prompt (distinct prompts, so no prefix cache hit
  flatters a system).

Everything comes from ``random.Random(seed)`` (the standard library's Mersenne Twister, stable
across Python versions), so the same seed replays the same trace anywhere.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from lorax.errors import json_object

__all__ = [
    "AdapterPopularity",
    "LengthDist",
    "TraceRequest",
    "WorkloadConfig",
    "arrival_times",
    "build_trace",
    "load_trace",
    "save_trace",
]

ArrivalProcess = Literal["poisson", "gamma"]


@dataclass(slots=True, frozen=True)
class LengthDist:
    """A token-count distribution: ``uniform:LO:HI`` (inclusive) or ``fixed:N``."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"need 1 <= low <= high, got [{self.low}, {self.high}]")

    @classmethod
    def parse(cls, text: str) -> LengthDist:
        """Parse ``uniform:8:512``, ``fixed:128`` or a bare ``128``."""
        kind, _, rest = text.partition(":")
        try:
            if not rest and kind.isdigit():
                return cls(int(kind), int(kind))
            if kind == "fixed":
                return cls(int(rest), int(rest))
            if kind == "uniform":
                low, high = rest.split(":")
                return cls(int(low), int(high))
        except ValueError as exc:
            raise ValueError(f"bad length distribution {text!r}: {exc}") from exc
        raise ValueError(f"bad length distribution {text!r} (uniform:LO:HI or fixed:N)")

    def sample(self, rng: random.Random) -> int:
        """One draw."""
        return rng.randint(self.low, self.high)

    def __str__(self) -> str:
        return f"fixed:{self.low}" if self.low == self.high else f"uniform:{self.low}:{self.high}"


@dataclass(slots=True, frozen=True)
class AdapterPopularity:
    """Which adapter a request uses: uniform, or power-law (zipf) with exponent ``alpha`` where
    adapter ``i`` (0-based) has weight ``1 / (i + 1) ** alpha`` (adapter 0 the most popular)."""

    kind: Literal["uniform", "zipf"] = "uniform"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "zipf"):
            raise ValueError(f"unknown adapter popularity {self.kind!r}")
        if self.alpha <= 0:
            raise ValueError("zipf alpha must be > 0")

    def cdf(self, num_adapters: int) -> list[float]:
        """Cumulative probabilities of adapters ``0..num_adapters-1`` (last one exactly 1)."""
        if num_adapters <= 0:
            raise ValueError("num_adapters must be > 0")
        if self.kind == "uniform":
            weights = [1.0] * num_adapters
        else:
            weights = [1.0 / (i + 1) ** self.alpha for i in range(num_adapters)]
        total = math.fsum(weights)
        cdf: list[float] = []
        running = 0.0
        for w in weights:
            running += w / total
            cdf.append(running)
        cdf[-1] = 1.0
        return cdf

    def picker(self, num_adapters: int) -> Callable[[float], int]:
        """``pick(u)``: the adapter index that the uniform draw ``u`` in [0, 1) selects (the
        inverse CDF, so monotone in ``u``)."""
        if self.kind == "uniform":
            if num_adapters <= 0:
                raise ValueError("num_adapters must be > 0")
            # Exact, where a summed CDF would drift by a rounding error at the boundaries.
            return lambda u: min(int(u * num_adapters), num_adapters - 1)
        cdf = self.cdf(num_adapters)
        return lambda u: min(bisect.bisect_right(cdf, u), num_adapters - 1)


@dataclass(slots=True)
class WorkloadConfig:
    """How a trace is drawn (see module docstring)."""

    num_requests: int = 1000
    seed: int = 0
    arrival: ArrivalProcess = "poisson"
    #: Coefficient of variation of the gamma gaps (ignored for poisson).
    cv: float = 1.0
    input_len: LengthDist = LengthDist(8, 512)
    output_len: LengthDist = LengthDist(8, 512)

    def __post_init__(self) -> None:
        if self.num_requests <= 0:
            raise ValueError("num_requests must be > 0")
        if self.arrival not in ("poisson", "gamma"):
            raise ValueError(f"unknown arrival process {self.arrival!r}")
        if self.cv <= 0:
            raise ValueError("cv must be > 0")


@dataclass(slots=True, frozen=True)
class TraceRequest:
    """One request of a trace. ``adapter_id`` (``""`` = the base model), ``prompt`` and
    ``arrival_s`` are set only when a JSONL trace fixes them; otherwise the sweep point decides
    from the draws."""

    unit_gap: float
    adapter_u: float
    input_len: int
    output_len: int
    prompt_seed: int
    adapter_id: str | None = None
    prompt: str | None = None
    arrival_s: float | None = None

    def __post_init__(self) -> None:
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError("input_len and output_len must be >= 1")
        if self.unit_gap < 0 or not 0 <= self.adapter_u < 1:
            raise ValueError("need unit_gap >= 0 and adapter_u in [0, 1)")


def _gap(config: WorkloadConfig, rng: random.Random) -> float:
    if config.arrival == "poisson":
        return rng.expovariate(1.0)
    shape = 1.0 / config.cv**2
    return rng.gammavariate(shape, 1.0 / shape)  # mean shape * scale = 1


def build_trace(config: WorkloadConfig) -> list[TraceRequest]:
    """Draw ``config.num_requests`` requests from ``config.seed``."""
    rng = random.Random(config.seed)
    return [
        TraceRequest(
            unit_gap=_gap(config, rng),
            adapter_u=rng.random(),
            input_len=config.input_len.sample(rng),
            output_len=config.output_len.sample(rng),
            prompt_seed=rng.getrandbits(63),
        )
        for _ in range(config.num_requests)
    ]


def arrival_times(trace: list[TraceRequest], rate: float) -> list[float]:
    """Seconds from the start at which each request is sent, at ``rate`` requests/s (``inf``:
    all at once). ``rate`` 0 means the trace's own ``arrival_s`` timestamps."""
    if rate == 0:
        if any(r.arrival_s is None for r in trace):
            raise ValueError("replaying trace timestamps needs arrival_s on every request")
        return [float(r.arrival_s or 0.0) for r in trace]
    if rate < 0:
        raise ValueError("rate must be > 0")
    if math.isinf(rate):
        return [0.0] * len(trace)
    times: list[float] = []
    t = 0.0
    for r in trace:
        t += r.unit_gap / rate
        times.append(t)
    return times


def save_trace(trace: list[TraceRequest], path: Path) -> None:
    """Write one JSON object per line (every field, so :func:`load_trace` replays it exactly)."""
    with path.open("w", encoding="utf-8") as f:
        for request in trace:
            fields = {k: v for k, v in asdict(request).items() if v is not None}
            f.write(json.dumps(fields) + "\n")


def load_trace(path: Path, seed: int = 0) -> list[TraceRequest]:
    """Read a JSONL trace. Each line needs ``input_len`` (or ``prompt``) and ``output_len``;
    ``adapter_id`` (``null`` or ``""`` = base model), ``arrival_s``, ``unit_gap``, ``adapter_u``
    and ``prompt_seed`` are optional, the missing draws coming from ``seed``."""
    rng = random.Random(seed)
    trace: list[TraceRequest] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                fields = json_object(json.loads(line))
                if fields is None:
                    raise ValueError("not a JSON object")
                trace.append(_from_fields(fields, rng))
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
    if not trace:
        raise ValueError(f"{path}: empty trace")
    return trace


def _from_fields(fields: dict[str, Any], rng: random.Random) -> TraceRequest:
    # Draw every optional value even when given, so one line's fields never shift the next
    # line's draws.
    draws = (rng.expovariate(1.0), rng.random(), rng.getrandbits(63))
    prompt = fields.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError("prompt must be a string")
    input_len = fields.get("input_len")
    if input_len is None:
        if prompt is None:
            raise KeyError("input_len (or prompt) is required")
        input_len = max(1, len(prompt.split()))
    # A present adapter_id fixes the adapter (null or "" = the base model); absent, it is drawn.
    adapter = str(fields["adapter_id"] or "") if "adapter_id" in fields else None
    arrival = fields.get("arrival_s")
    return TraceRequest(
        unit_gap=float(fields.get("unit_gap", draws[0])),
        adapter_u=float(fields.get("adapter_u", draws[1])),
        input_len=int(input_len),
        output_len=int(fields["output_len"]),
        prompt_seed=int(fields.get("prompt_seed", draws[2])),
        adapter_id=adapter,
        prompt=prompt,
        arrival_s=None if arrival is None else float(arrival),
    )
