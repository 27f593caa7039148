"""Server-wide settings of constrained decoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Whitespace = Literal["compact", "spaced"]

# Separators per whitespace style: (item separator, key separator). Both styles allow no
# whitespace anywhere else, so every document has a bounded length for bounded content and a
# sampler can never wander in an endless run of blanks.
SEPARATORS: dict[str, tuple[str, str]] = {
    "compact": (",", ":"),
    "spaced": (", ", ": "),
}


@dataclass(slots=True)
class StructuredOutputConfig:
    """How JSON documents are constrained.

    Attributes:
        whitespace: "compact" (`{"a":1,"b":[1,2]}`, the default) or "spaced"
            (`{"a": 1, "b": [1, 2]}`, like Python's `json.dumps`). Never free whitespace.
        cache_size: compiled grammars kept, keyed by schema hash (least recently used dropped).
        num_fill_threads: CPU threads that fill the token masks of constrained rows.
        check_tokenizer: verify at start-up that every token's bytes are what the grammar
            engine believes they are (see `tokenizer_check`).
    """

    whitespace: Whitespace = "compact"
    cache_size: int = 256
    num_fill_threads: int = 4
    check_tokenizer: bool = True

    def __post_init__(self) -> None:
        if self.whitespace not in SEPARATORS:
            raise ValueError(
                f"whitespace must be one of {sorted(SEPARATORS)}, got {self.whitespace!r}"
            )
        if self.cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {self.cache_size}")
        if self.num_fill_threads < 1:
            raise ValueError(f"num_fill_threads must be >= 1, got {self.num_fill_threads}")
