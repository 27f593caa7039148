"""The llguidance implementation of `GrammarBackend` and `TokenConstraint`.

llguidance compiles a JSON schema into a lazy lexer + Earley parser over the tokenizer's
byte trie, with no torch coupling, and refuses (rather than approximates) every keyword it
cannot enforce. Masks are computed in Rust with the GIL released, so several CPU threads can
fill rows in parallel.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import llguidance
import numpy as np
import numpy.typing as npt

from lorax_engine.structured.config import SEPARATORS, Whitespace
from lorax_engine.structured.response_format import JsonSchemaFormat

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Errors never echo the request's schema or parser state into messages and logs.
_LIMITS = llguidance.LLParserLimits(verbose_errors=False)
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: (\[.*\])")


def tokenizer_json(tokenizer: Any) -> str:
    """The `tokenizer.json` text of a tokenizers-backed tokenizer.

    Accepts a `tokenizers.Tokenizer` or a transformers fast tokenizer (anything with a
    `backend_tokenizer`). Padding and truncation are switched off on a copy: they would change
    how llguidance tokenizes forced text.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "to_str"):
        raise TypeError(
            "structured output needs a fast (tokenizers-backed) tokenizer, got "
            f"{type(tokenizer).__name__}"
        )
    backend = copy.copy(backend)
    backend.no_padding()
    backend.no_truncation()
    return str(backend.to_str())


def stop_token_ids_of(tokenizer: Any) -> list[int]:
    """The tokenizer's EOS id(s), as a list."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; pass stop_token_ids explicitly")
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def build_ll_tokenizer(tokenizer: Any, stop_token_ids: Sequence[int]) -> llguidance.LLTokenizer:
    """An llguidance tokenizer for `tokenizer` whose stop tokens are `stop_token_ids`.

    Building it walks the whole vocabulary (about a second for 128k tokens): make it once per
    model, not per request.
    """
    if not stop_token_ids:
        raise ValueError("stop_token_ids must not be empty")
    try:
        return llguidance.LLTokenizer(tokenizer_json(tokenizer), eos_token=list(stop_token_ids))
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"llguidance cannot read this tokenizer: {exc}") from exc


def _explain(message: str) -> str:
    """Make an llguidance error name the keyword in JSON Schema terms."""
    found = _UNIMPLEMENTED.search(message)
    if found:
        return (
            f"unsupported JSON schema keyword(s) {found.group(1)}: the grammar engine cannot "
            "enforce them"
        )
    return message


class LLGuidanceConstraint:
    """`TokenConstraint` over one `llguidance.LLMatcher`.

    A matcher that was fed a disallowed token stays in an error state in which only the stop
    tokens are allowed, so a broken request still ends instead of sampling from nothing.
    """

    __slots__ = ("_mask_bytes", "_matcher")

    def __init__(self, matcher: llguidance.LLMatcher, mask_words: int) -> None:
        self._matcher = matcher
        self._mask_bytes = mask_words * 4

    def fill_allowed(self, bitmask: npt.NDArray[np.int32]) -> None:
        """Fill `bitmask`; a mask longer than the tokenizer's vocabulary (a model whose
        embedding is padded past it) gets its extra words zeroed: padding ids never allowed."""
        # The pointer goes straight to Rust: check what it points at first.
        if bitmask.dtype != np.int32 or bitmask.ndim != 1 or not bitmask.flags.c_contiguous:
            raise ValueError("bitmask must be a 1-D C-contiguous int32 array")
        if bitmask.nbytes < self._mask_bytes:
            raise ValueError(f"bitmask needs >= {self._mask_bytes // 4} words, got {bitmask.size}")
        self._matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, self._mask_bytes)
        bitmask[self._mask_bytes // 4 :] = 0

    def accept(self, token_id: int) -> bool:
        return self._matcher.consume_token(token_id)

    def is_finished(self) -> bool:
        return self._matcher.is_accepting()

    @property
    def matcher(self) -> llguidance.LLMatcher:
        return self._matcher

    @property
    def mask_bytes(self) -> int:
        return self._mask_bytes

    @property
    def error(self) -> str | None:
        """Why the constraint died (a disallowed token was accepted), else None."""
        return self._matcher.get_error() if self._matcher.is_error() else None


class LLGuidanceBatchFill:
    """Fills many llguidance constraints' masks in one call on llguidance's own Rust thread
    pool: no Python work per row, which at tens of microseconds of mask per row would
    otherwise be a large share of the cost."""

    def __init__(self, num_threads: int) -> None:
        self._executor = llguidance.LLExecutor(num_threads)

    @staticmethod
    def accepts(constraints: Sequence[object], words: int) -> bool:
        """Whether every constraint is an llguidance one whose mask is exactly `words` wide."""
        return all(
            isinstance(c, LLGuidanceConstraint) and c.mask_bytes == words * 4 for c in constraints
        )

    def __call__(
        self, constraints: Sequence[LLGuidanceConstraint], masks: npt.NDArray[np.int32]
    ) -> None:
        """Fill `masks` (`[len(constraints), words]` int32, C-contiguous), row i for
        constraint i. Blocks, with the GIL released, until every row is done."""
        if masks.dtype != np.int32 or not masks.flags.c_contiguous:
            raise ValueError("masks must be a C-contiguous int32 array")
        if not self.accepts(constraints, masks.shape[1]) or len(constraints) != masks.shape[0]:
            raise ValueError("one llguidance constraint per mask row, of the row's width")
        pairs = [(c.matcher, i) for i, c in enumerate(constraints)]
        self._executor.unsafe_compute_mask_ptr(
            pairs, masks.ctypes.data, masks.shape[1] * 4, masks.shape[0]
        )


class LLGuidanceBackend:
    """`GrammarBackend` for one tokenizer, with bounded whitespace (see `config.SEPARATORS`)."""

    def __init__(self, ll_tokenizer: llguidance.LLTokenizer, whitespace: Whitespace) -> None:
        item_sep, key_sep = SEPARATORS[whitespace]
        self._tokenizer = ll_tokenizer
        # Overrides beat a schema's own `x-guidance` options, so no request can turn on free
        # whitespace (unbounded documents), lenient mode (ignored keywords) or oneOf coercion
        # (a weaker anyOf).
        self._options: JsonCompileOptions = {
            "item_separator": item_sep,
            "key_separator": key_sep,
            "whitespace_flexible": False,
            "coerce_one_of": False,
            "lenient": False,
        }
        self._mask_words = (ll_tokenizer.vocab_size + 31) // 32

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.vocab_size

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        return self._tokenizer

    def compile(self, fmt: JsonSchemaFormat) -> llguidance.LLMatcher:
        """A matcher at the start of the document, kept as a template for `start`."""
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                dict(fmt.schema),
                overrides=self._options,
            )
        except ValueError as exc:
            raise ValueError(f"response_format.schema: {exc}") from exc
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, self._tokenizer, limits=_LIMITS
        )
        # A warning means llguidance approximates something: refuse rather than enforce less.
        if is_error or messages:
            raise ValueError(f"response_format.schema: {_explain('; '.join(messages))}")
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0, limits=_LIMITS)
        if matcher.is_error():
            raise ValueError(f"response_format.schema: {_explain(matcher.get_error())}")
        return matcher

    def start(self, compiled: object) -> LLGuidanceConstraint:
        if not isinstance(compiled, llguidance.LLMatcher):
            raise TypeError("compiled grammar was not made by LLGuidanceBackend.compile")
        # deep_copy shares the compiled lexer/parser tables and copies only the parse state.
        return LLGuidanceConstraint(compiled.deep_copy(), self._mask_words)
