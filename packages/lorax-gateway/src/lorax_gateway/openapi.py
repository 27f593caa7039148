"""How the OpenAPI document describes what the gateway really answers.

Litestar documents a handler's success answer and a 400 with its own ``{status_code, detail}``
body. The gateway answers every failure with ``{error, error_type}`` (bad input as 422, never 400;
see :mod:`lorax_gateway.errors`), streams as ``text/event-stream``, and refuses unknown keys where
its models forbid them. This module brings the document in line: one error model, the error
answers each route can give, operation classes that drop the 400 and add the SSE media type, and a
schema plugin that keeps every bound validation enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import annotated_types
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Reference
from litestar.openapi.spec import Schema as OpenAPISchema
from litestar.plugins.pydantic import PydanticSchemaPlugin
from litestar.typing import FieldDefinition
from pydantic import BaseModel, ConfigDict

from lorax_gateway.errors import STATUS_BY_ERROR_TYPE

SSE_MEDIA_TYPE = "text/event-stream"
#: The ``data`` of one SSE event: a JSON object (a token, a chunk or an error), or the OpenAI
#: streams' closing ``[DONE]``.
SSE_EVENT_SCHEMA = OpenAPISchema(
    one_of=[
        OpenAPISchema(type=OpenAPIType.OBJECT),
        OpenAPISchema(type=OpenAPIType.STRING, const="[DONE]"),
    ]
)


class ErrorBody(BaseModel):
    """The body of every error answer: ``{"error": str, "error_type": str}``."""

    model_config = ConfigDict(extra="forbid")

    error: str
    error_type: str


def _description(status: int) -> str:
    types = sorted(t for t, s in STATUS_BY_ERROR_TYPE.items() if s == status)
    return f"Error ({', '.join(types)})" if types else "Error"


#: What any route may answer whatever it does: auth (when a tenants file is set), an oversized
#: body, and a request that fails its validation.
COMMON_ERRORS = (401, 403, 413, 422)
#: What a route that runs a generation may also answer: unknown adapter, adapter load or
#: generation failure, admission or tenant limits, no engine available.
GENERATION_ERRORS = (*COMMON_ERRORS, 404, 424, 429, 503)


def error_responses(statuses: tuple[int, ...]) -> dict[int, ResponseSpec]:
    """``responses=`` for a route decorator: each status with the :class:`ErrorBody` model."""
    return {
        status: ResponseSpec(
            data_container=ErrorBody, description=_description(status), generate_examples=False
        )
        for status in statuses
    }


def _drop_litestar_400(operation: Operation) -> None:
    # Litestar adds a 400 for handlers that take a body; the gateway answers those errors as 422.
    if operation.responses is not None:
        operation.responses.pop("400", None)


@dataclass
class JsonOperation(Operation):
    """An operation whose success answer is JSON (Litestar's 400 removed)."""

    def __post_init__(self) -> None:
        _drop_litestar_400(self)


@dataclass
class StreamOrJsonOperation(Operation):
    """An operation that answers JSON, or SSE when the body asks for ``stream: true``."""

    def __post_init__(self) -> None:
        _drop_litestar_400(self)
        success = self.responses.get("200") if self.responses is not None else None
        if success is not None and not isinstance(success, Reference) and success.content:
            success.content[SSE_MEDIA_TYPE] = OpenAPIMediaType(schema=SSE_EVENT_SCHEMA)
            success.description = f"{success.description}; SSE (text/event-stream) with stream"


#: Numeric bounds of pydantic fields, as the OpenAPI ``Schema`` attribute that carries each.
_BOUNDS = (
    (annotated_types.Gt, "gt", "exclusive_minimum"),
    (annotated_types.Ge, "ge", "minimum"),
    (annotated_types.Lt, "lt", "exclusive_maximum"),
    (annotated_types.Le, "le", "maximum"),
)


class StrictPydanticSchemaPlugin(PydanticSchemaPlugin):
    """Pydantic schemas that promise no more than validation accepts.

    Two gaps of Litestar's pydantic schemas are closed: a model that refuses unknown keys says so
    (``additionalProperties: false``), and a numeric bound of an optional field is kept even when
    it is 0 (Litestar drops a falsy bound there, so ``max_new_tokens: 0`` looked valid).
    """

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Any:
        """The pydantic plugin's schema with both gaps closed."""
        schema = super().to_openapi_schema(field_definition, schema_creator)
        annotation: object = field_definition.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return schema
        model: type[BaseModel] = annotation
        if model.model_config.get("extra") == "forbid":
            schema.additional_properties = False
        properties = schema.properties or {}
        for name, info in model.model_fields.items():
            prop = properties.get(info.alias or name)
            if not isinstance(prop, OpenAPISchema):
                continue
            for constraint in info.metadata:
                for kind, attr, schema_attr in _BOUNDS:
                    if isinstance(constraint, kind) and getattr(prop, schema_attr) is None:
                        setattr(prop, schema_attr, getattr(constraint, attr))
        return schema
