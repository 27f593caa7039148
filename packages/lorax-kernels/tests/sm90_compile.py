"""Compile Triton launches for Hopper (sm_90) on a machine without a GPU.

The interpreter tests check what a kernel computes, not that Triton can compile it for a GPU: a
kernel the interpreter runs may still fail to compile (Triton 3.6 once refused an ``atomic_xchg``
on the bf16 stand-in pointer of a branch that never ran). ``captured_launches`` runs a kernel's
Python launcher on CPU tensors with every ``kernel[grid](...)`` recorded instead of run;
``compile_sm90`` then compiles each recorded launch for sm_90 with the ptxas Triton ships and
reports the shared memory the kernel needs (more than a block may have also fails only at launch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

HOPPER = GPUTarget("cuda", 90, 32)
# Shared memory one block may use on sm_90 (227 KiB): a kernel needing more compiles but fails to
# launch ("out of resource").
HOPPER_MAX_SHARED = 227 * 1024
_POINTEE = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
    torch.float8_e4m3fn: "fp8e4nv",
}
# Launch keywords that are compile options, not kernel arguments.
_OPTIONS = ("num_warps", "num_stages", "launch_pdl", "maxnreg")


@dataclass(frozen=True, slots=True)
class Launch:
    """One recorded ``kernel[grid](*args, **kwargs)``."""

    kernel: JITFunction
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@contextlib.contextmanager
def captured_launches() -> Iterator[list[Launch]]:
    """Record every Triton launch made inside the block instead of running it."""
    launches: list[Launch] = []
    original = JITFunction.run

    def record(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        launches.append(Launch(self, args, kwargs))

    JITFunction.run = record  # type: ignore[method-assign]
    try:
        yield launches
    finally:
        JITFunction.run = original  # type: ignore[method-assign]


def _arg_type(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _POINTEE[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for a {type(value).__name__} argument")


def specialization(launch: Launch) -> str:
    """The variant ``launch`` would compile on the GPU, as Triton's launcher keys its cache:
    every argument's type and class (an int equal to 1 or divisible by 16, an aligned pointer)
    and the constexprs. Launches with equal keys share one compiled kernel."""
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, make_backend(HOPPER))
    kwargs = {k: v for k, v in launch.kwargs.items() if k not in _OPTIONS}
    _, spec, _ = binder(*launch.args, **kwargs)
    options = sorted((k, v) for k, v in launch.kwargs.items() if k in _OPTIONS)
    return f"{kernel.fn.__name__} {spec} {options}"


def compile_sm90(launch: Launch) -> int:
    """Compile ``launch`` for sm_90 and return the shared memory it needs per block, in bytes
    (raises on a compile failure)."""
    kernel = launch.kernel
    kwargs = {k: v for k, v in launch.kwargs.items() if k not in _OPTIONS}
    # FP fusion on, as on the GPU machine's Triton (and said explicitly: Triton 3.9 warns when
    # it has to assume the default).
    options = {"enable_fp_fusion": True}
    options |= {k: v for k, v in launch.kwargs.items() if k in _OPTIONS}
    bound = kernel.signature.bind(*launch.args, **kwargs)
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    for param in kernel.params:
        value = bound.arguments.get(param.name, param.default)
        if param.is_constexpr or value is None:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        else:
            signature[param.name] = _arg_type(value)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs), HOPPER, options)
    assert compiled.asm["cubin"], "no cubin"
    return compiled.metadata.shared
