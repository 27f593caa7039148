"""`ConstraintFactory`: response formats -> `TokenConstraint`s, with compiled grammars cached
by schema hash; and `make_constraint`, the one call the sampler needs."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from lorax_engine.structured.config import StructuredOutputConfig
from lorax_engine.structured.constraint import GrammarBackend, TokenConstraint
from lorax_engine.structured.llguidance_backend import (
    LLGuidanceBackend,
    build_ll_tokenizer,
    stop_token_ids_of,
)
from lorax_engine.structured.mask_filler import MaskFiller
from lorax_engine.structured.response_format import parse_response_format
from lorax_engine.structured.tokenizer_check import check_tokenizer


class ConstraintFactory:
    """Makes constraints for one model's tokenizer. Thread-safe.

    Construction builds the grammar engine's view of the tokenizer and (unless disabled)
    checks that it maps cleanly; do it once at engine start-up, so a tokenizer that cannot be
    constrained fails the start rather than a request.

    Args:
        tokenizer: a transformers fast tokenizer or a `tokenizers.Tokenizer`.
        config: whitespace style, cache size, checks.
        stop_token_ids: tokens that may end a complete document (default: the tokenizer's
            EOS); pass the model's generation-config EOS list when it has several.
        backend: a ready `GrammarBackend` (for an alternative engine such as xgrammar);
            default llguidance.
    """

    def __init__(
        self,
        tokenizer: Any,
        config: StructuredOutputConfig | None = None,
        stop_token_ids: Sequence[int] | None = None,
        backend: GrammarBackend | None = None,
    ) -> None:
        self.config = config if config is not None else StructuredOutputConfig()
        stops = list(stop_token_ids) if stop_token_ids is not None else stop_token_ids_of(tokenizer)
        if backend is None:
            ll_tokenizer = build_ll_tokenizer(tokenizer, stops)
            if self.config.check_tokenizer:
                check_tokenizer(tokenizer, ll_tokenizer, stops)
            backend = LLGuidanceBackend(ll_tokenizer, self.config.whitespace)
        self.backend: GrammarBackend = backend
        self.stop_token_ids: tuple[int, ...] = tuple(stops)
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def vocab_size(self) -> int:
        """Tokens covered by a mask."""
        return self.backend.vocab_size

    @property
    def mask_words(self) -> int:
        """int32 words in one row's bitmask."""
        return (self.backend.vocab_size + 31) // 32

    def mask_filler(self, max_rows: int) -> MaskFiller:
        """A `MaskFiller` for this vocabulary with the configured fill threads; `max_rows` is
        the most constrained rows one step can have (the engine's batch size)."""
        return MaskFiller(self.mask_words, max_rows, self.config.num_fill_threads)

    def make(self, response_format: object) -> TokenConstraint | None:
        """The constraint for a request's `response_format` (None: unconstrained text).

        Raises:
            ValueError: the format or schema is invalid or cannot be enforced exactly; the
                message names the field or keyword.
        """
        fmt = parse_response_format(response_format)
        if fmt is None:
            return None
        with self._lock:
            compiled = self._cache.get(fmt.key)
            if compiled is not None:
                self._cache.move_to_end(fmt.key)
                self.cache_hits += 1
        if compiled is None:
            # Compile outside the lock: a big schema must not stall other requests. Two
            # threads racing on one new schema both compile; the results are equivalent.
            compiled = self.backend.compile(fmt)
            with self._lock:
                self.cache_misses += 1
                self._cache[fmt.key] = compiled
                self._cache.move_to_end(fmt.key)
                while len(self._cache) > self.config.cache_size:
                    self._cache.popitem(last=False)
        return self.backend.start(compiled)


_factories: dict[int, ConstraintFactory] = {}
_factories_lock = threading.Lock()


def factory_for(tokenizer: Any) -> ConstraintFactory:
    """The default-configured factory of `tokenizer`, made on first use and kept while the
    tokenizer lives."""
    key = id(tokenizer)
    with _factories_lock:
        factory = _factories.get(key)
    if factory is not None:
        return factory
    made = ConstraintFactory(tokenizer)
    with _factories_lock:
        factory = _factories.setdefault(key, made)
        if factory is made:
            # Forget the factory when the tokenizer goes, so a new object reusing the id is
            # not served a stale vocabulary.
            weakref.finalize(tokenizer, _factories.pop, key, None)
    return factory


def make_constraint(response_format: object, tokenizer: Any) -> TokenConstraint | None:
    """The sampler's entry point: a fresh constraint for one request, or None for text.

    Equivalent to `factory_for(tokenizer).make(response_format)`. An engine that wants its
    own settings (spaced whitespace, several EOS ids) builds a `ConstraintFactory` at start-up
    and calls `make` on it instead.
    """
    return factory_for(tokenizer).make(response_format)
