"""Structured output: JSON / JSON-schema constrained decoding (docs/structured-output.md).

The engine builds one `ConstraintFactory` per model at start-up (it checks the tokenizer),
makes a `TokenConstraint` per request with `response_format`, and each step lets a
`MaskFiller` compute the constrained rows' token masks on CPU threads during the forward pass.
"""

from lorax_engine.structured.config import StructuredOutputConfig
from lorax_engine.structured.constraint import GrammarBackend, TokenConstraint
from lorax_engine.structured.factory import ConstraintFactory, factory_for, make_constraint
from lorax_engine.structured.llguidance_backend import LLGuidanceBackend, LLGuidanceConstraint
from lorax_engine.structured.mask_filler import MaskFiller, PendingMasks, apply_token_bitmask_
from lorax_engine.structured.response_format import (
    JsonSchemaFormat,
    check_schema,
    parse_response_format,
    schema_key,
)
from lorax_engine.structured.tokenizer_check import TokenizerMappingError, check_tokenizer

__all__ = [
    "ConstraintFactory",
    "GrammarBackend",
    "JsonSchemaFormat",
    "LLGuidanceBackend",
    "LLGuidanceConstraint",
    "MaskFiller",
    "PendingMasks",
    "StructuredOutputConfig",
    "TokenConstraint",
    "TokenizerMappingError",
    "apply_token_bitmask_",
    "check_schema",
    "check_tokenizer",
    "factory_for",
    "make_constraint",
    "parse_response_format",
    "schema_key",
]
