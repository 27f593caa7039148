"""Tensor parallelism across the GPUs of one host (``--num-shard``).

Rank 0 is the engine: scheduler, sampler, adapter manager. Ranks 1..N-1 are worker processes the
engine spawns; each holds a shard of the model and its KV cache and runs every step rank 0
broadcasts. See ``parallel`` (the context the decoder uses), ``driver`` (rank 0), ``worker``.
"""

from lorax_engine.distributed.parallel import (
    TensorParallel,
    check_shardable,
    padded_vocab,
    shard_config,
)

__all__ = ["TensorParallel", "check_shardable", "padded_vocab", "shard_config"]
