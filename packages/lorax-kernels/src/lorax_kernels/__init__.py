"""lorax-kernels: multi-LoRA (SGMV), paged-attention and fused elementwise ops (RMS norm, SwiGLU,
rotary, greedy choice) with plain-PyTorch references.

Every op dispatches on the device of its inputs: Triton kernels registered as torch custom ops on
CUDA, the readable fp32 reference (``lorax_kernels.<op>.reference``) elsewhere.
"""

from lorax_kernels.activation import silu_and_mul
from lorax_kernels.decode_attention import paged_decode_attention
from lorax_kernels.greedy import greedy_logprob
from lorax_kernels.kv_cache import reshape_and_cache_
from lorax_kernels.norm import fused_add_rms_norm, rms_norm
from lorax_kernels.prefill_attention import paged_prefill_attention
from lorax_kernels.rotary import rotary_embedding_
from lorax_kernels.sgmv import (
    LoraBatchMeta,
    lora_apply_,
    lora_expand_,
    lora_expand_partials_,
    lora_shrink,
    lora_shrink_partials,
    uses_fused_kernel,
)

__version__ = "0.1.0"

__all__ = [
    "LoraBatchMeta",
    "fused_add_rms_norm",
    "greedy_logprob",
    "lora_apply_",
    "lora_expand_",
    "lora_expand_partials_",
    "lora_shrink",
    "lora_shrink_partials",
    "paged_decode_attention",
    "paged_prefill_attention",
    "reshape_and_cache_",
    "rms_norm",
    "rotary_embedding_",
    "silu_and_mul",
    "uses_fused_kernel",
]
