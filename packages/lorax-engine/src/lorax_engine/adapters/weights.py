"""``LoraWeights``: one validated LoRA adapter in host memory (docs/internals.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lorax_engine.adapters.safetensors_file import FileStat
from lorax_engine.lora.packed import PackedLora, pack_lora

# PEFT target names the runner can apply, in the order a Llama-style decoder layer runs them (and
# PEFT's ``named_modules`` lists them), which the merge code relies on for DARE's random draws.
TARGET_ORDER: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

ModuleKey = tuple[int, str]  # (layer index, PEFT target name)


@dataclass(slots=True, frozen=True)
class WeightsOrigin:
    """The file host weights were read from, and everything else their packed form depends on.

    Equal origins give equal weights, so the CPU tier keeps one packed copy for every adapter id
    that resolves to the same unchanged file under the same config (e.g. many ids linked to one
    directory). A rewritten file has a new mtime (or inode, or size): a new origin.
    """

    file: FileStat
    config_digest: str  # sha256 of adapter_config.json's content
    dtype: torch.dtype


@dataclass(slots=True)
class LoraWeights:
    """A LoRA adapter ready to be written into a GPU slot.

    Every module holds ``A [rank, in_features]`` and ``B [out_features, rank]`` in one dtype; the
    delta it adds to a base linear layer is ``scale * B @ A``. Modules of a smaller rank (PEFT's
    ``rank_pattern``) are zero-padded to ``rank``, which adds nothing to the product, so the slot
    tables can use one rank per adapter.

    ``packed``: the same tensors stacked per target in one pinned buffer (``modules`` are views of
    it), as the CPU tier keeps adapters so that a promotion is a few large asynchronous copies.
    """

    adapter_key: str
    rank: int
    scale: float
    modules: dict[ModuleKey, tuple[torch.Tensor, torch.Tensor]]
    packed: PackedLora | None = None
    # Where the weights were read from (None: made in memory, e.g. a merge); see WeightsOrigin.
    origin: WeightsOrigin | None = None
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"rank must be positive, got {self.rank}")
        if not self.modules:
            raise ValueError("an adapter needs at least one module")
        dtypes = set()
        for (layer, target), (a, b) in self.modules.items():
            if layer < 0 or target not in TARGET_ORDER:
                raise ValueError(f"bad module key {(layer, target)}")
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != self.rank or b.shape[1] != self.rank:
                raise ValueError(
                    f"module {(layer, target)}: expected A [{self.rank}, in] and B [out, {self.rank}],"
                    f" got {tuple(a.shape)} and {tuple(b.shape)}"
                )
            dtypes.update((a.dtype, b.dtype))
        if len(dtypes) != 1:
            raise ValueError(f"all tensors must share one dtype, got {sorted(map(str, dtypes))}")
        # Packed, the host memory held is the buffer (layers a target lacks included).
        self.nbytes = (
            self.packed.nbytes
            if self.packed is not None
            else sum(a.nbytes + b.nbytes for a, b in self.modules.values())
        )

    @classmethod
    def from_packed(
        cls, adapter_key: str, packed: PackedLora, origin: WeightsOrigin | None = None
    ) -> LoraWeights:
        """An adapter whose modules are views of ``packed`` (no copy)."""
        return cls(adapter_key, packed.rank, packed.scale, packed.module_views(), packed, origin)

    @property
    def dtype(self) -> torch.dtype:
        a, _ = next(iter(self.modules.values()))
        return a.dtype

    @property
    def is_pinned(self) -> bool:
        return all(a.is_pinned() and b.is_pinned() for a, b in self.modules.values())

    def ordered_keys(self) -> list[ModuleKey]:
        """Module keys by layer, then in decoder order (q, k, v, o, gate, up, down)."""
        return sorted(self.modules, key=lambda k: (k[0], TARGET_ORDER.index(k[1])))

    def pin_memory(self) -> LoraWeights:
        """A packed copy in page-locked memory, so a promotion is a few asynchronous copies.

        Returns ``self`` when CUDA is absent (pinning needs a CUDA context and buys nothing there)
        or when already packed and pinned.
        """
        if not torch.cuda.is_available() or (self.packed is not None and self.packed.is_pinned):
            return self
        return LoraWeights.from_packed(self.adapter_key, pack_lora(self, pin=True), self.origin)

    def renamed(self, adapter_key: str) -> LoraWeights:
        """The same tensors (and packed buffer) under another cache key."""
        return LoraWeights(
            adapter_key, self.rank, self.scale, self.modules, self.packed, self.origin
        )

    def equal(self, other: LoraWeights) -> bool:
        """Bit-for-bit equality of rank, scale and every tensor (used to prove lossless moves)."""
        return (
            self.rank == other.rank
            and self.scale == other.scale
            and self.modules.keys() == other.modules.keys()
            and all(
                torch.equal(a, other.modules[k][0]) and torch.equal(b, other.modules[k][1])
                for k, (a, b) in self.modules.items()
            )
        )
