"""Which quantization a model is served with: the ``--quantize`` flag checked against the checkpoint.

GPTQ and AWQ checkpoints say what they are in ``config.json``'s ``quantization_config``; fp8 and
the bitsandbytes methods are applied at load to an unquantized checkpoint. Every combination we
cannot serve correctly fails here, at start-up, with a message naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Applied at load to an unquantized checkpoint: bitsandbytes is LLM.int8 (8-bit), -nf4/-fp4 are
# its 4-bit data types (the optional extra lorax-engine[bitsandbytes]).
AT_LOAD_METHODS = ("fp8", "bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4")
QUANTIZE_METHODS = ("fp8", "gptq", "awq", "bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4")


@dataclass(slots=True, frozen=True)
class QuantSpec:
    """A validated quantization: ``method`` and, for the 4-bit formats, their parameters.

    ``group_size`` -1 is one group over all input features. ``zeros_minus_one``: GPTQ's original
    (v1) checkpoint format stores each zero point minus one.
    """

    method: str
    bits: int = 16
    group_size: int = -1
    desc_act: bool = False
    zeros_minus_one: bool = False

    def __post_init__(self) -> None:
        if self.method not in QUANTIZE_METHODS:
            raise ValueError(f"unknown quantization {self.method!r}: use {QUANTIZE_METHODS}")
        if self.method in ("gptq", "awq"):
            if self.bits != 4:
                raise ValueError(
                    f"{self.method} checkpoint with bits={self.bits}: only 4-bit is supported"
                )
            if self.group_size != -1 and (self.group_size <= 0 or self.group_size % 8):
                raise ValueError(
                    f"{self.method} group_size {self.group_size} is not supported: "
                    "use -1 (one group) or a positive multiple of 8 (32, 64, 128, ...)"
                )


def resolve_quant_spec(flag: str | None, hf_config: dict[str, Any]) -> QuantSpec | None:
    """The spec for serving a checkpoint (its parsed ``config.json``) with ``--quantize flag``.

    No flag: a GPTQ/AWQ checkpoint is served as such, anything else unquantized.
    """
    qc = hf_config.get("quantization_config")
    ckpt = str(qc.get("quant_method", "")).lower() if isinstance(qc, dict) else None
    if flag is not None and flag not in QUANTIZE_METHODS:
        raise ValueError(f"--quantize {flag!r}: use one of {', '.join(QUANTIZE_METHODS)}")
    if ckpt is None:
        if flag in ("gptq", "awq"):
            raise ValueError(
                f"--quantize {flag} needs a {flag.upper()} checkpoint, but config.json has no "
                "quantization_config (serve it unquantized, or with --quantize fp8)"
            )
        return QuantSpec(flag) if flag in AT_LOAD_METHODS else None
    assert isinstance(qc, dict)
    if ckpt == "bitsandbytes":
        raise ValueError(
            "checkpoint was saved already quantized by bitsandbytes, which this engine cannot "
            "load: serve the unquantized checkpoint with --quantize bitsandbytes (8-bit) or "
            "--quantize bitsandbytes-nf4 (4-bit), which quantize it at load"
        )
    if ckpt not in ("gptq", "awq"):
        raise ValueError(
            f"checkpoint is quantized with {ckpt!r}, which this engine cannot load; "
            "supported: gptq and awq checkpoints (or --quantize fp8 on an unquantized one)"
        )
    if flag is not None and flag != ckpt:
        raise ValueError(
            f"--quantize {flag} does not match the checkpoint, which is {ckpt.upper()}-quantized: "
            f"pass --quantize {ckpt} or leave the flag out"
        )
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    if ckpt == "awq":
        version = str(qc.get("version", "gemm")).lower()
        if version != "gemm":
            raise ValueError(f"AWQ version {version!r} is not supported (only the GEMM packing)")
        if not qc.get("zero_point", True):
            raise ValueError("AWQ without zero points is not supported")
        return QuantSpec("awq", bits=bits, group_size=group)
    fmt = str(qc.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"GPTQ checkpoint_format {fmt!r} is not supported (gptq or gptq_v2)")
    return QuantSpec(
        "gptq",
        bits=bits,
        group_size=group,
        desc_act=bool(qc.get("desc_act", False)),
        zeros_minus_one=fmt == "gptq",
    )
