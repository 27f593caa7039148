"""``dispatch.call``: the CUDA implementation directly for CUDA tensors, the custom op otherwise."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lorax_kernels import dispatch


def _record(calls: list[str], name: str):
    def fn(*args: object) -> str:
        calls.append(name)
        return name

    return fn


def test_cpu_tensors_go_through_the_op() -> None:
    calls: list[str] = []
    out = dispatch.call(_record(calls, "op"), _record(calls, "cuda"), torch.zeros(1), 2)
    assert (out, calls) == ("op", ["op"])


def test_cuda_tensors_call_the_implementation() -> None:
    on_cuda = SimpleNamespace(is_cuda=True)  # what the dispatch reads of the first argument
    calls: list[str] = []
    assert dispatch.call(_record(calls, "op"), _record(calls, "cuda"), on_cuda) == "cuda"
    assert calls == ["cuda"]


def test_a_compile_trace_goes_through_the_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    calls: list[str] = []
    on_cuda = SimpleNamespace(is_cuda=True)
    assert dispatch.call(_record(calls, "op"), _record(calls, "cuda"), on_cuda) == "op"
