"""The interfaces the sampler sees: a per-request `TokenConstraint` and the `GrammarBackend`
that makes them (llguidance today; xgrammar could be another implementation)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from lorax_engine.structured.response_format import JsonSchemaFormat


@runtime_checkable
class TokenConstraint(Protocol):
    """The grammar state of one constrained request (docs/internals.md section 3).

    Not thread-safe: one request's constraint is touched by one thread at a time (the mask
    filler while a step's forward runs, the step loop when it accepts the sampled token).
    """

    def fill_allowed(self, bitmask: npt.NDArray[np.int32]) -> None:
        """Write the allowed next tokens into `bitmask` (int32 `[ceil(vocab/32)]`, bit
        `t % 32` of word `t // 32` set = token `t` allowed; a longer mask, sized for a model
        vocabulary padded past the tokenizer's, has its extra words zeroed). Stop tokens are
        allowed only where the document is complete."""
        ...

    def accept(self, token_id: int) -> bool:
        """Advance past the sampled token; False (and a dead constraint) if it was not
        allowed."""
        ...

    def is_finished(self) -> bool:
        """True when the document is complete, so a stop token may end it."""
        ...


class GrammarBackend(Protocol):
    """Compiles response formats for one tokenizer and starts constraints from them."""

    @property
    def vocab_size(self) -> int:
        """Tokens covered by a mask (bitmask words = ceil(vocab_size / 32))."""
        ...

    def compile(self, fmt: JsonSchemaFormat) -> object:
        """Compile `fmt` into a reusable grammar (cached by the caller by `fmt.key`).

        Raises:
            ValueError: the schema uses something the backend cannot enforce exactly; the
                message names it.
        """
        ...

    def start(self, compiled: object) -> TokenConstraint:
        """A fresh constraint at the start of a document."""
        ...
