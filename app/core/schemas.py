"""Response models shared by every domain: the error body, the page shapes and the base of every
response model.

The response models declare what the routes return today, field for field: the OpenAPI document is
built from them, the generated clients and `pedigree.client` parse with them. A field a route returns
but its model does not declare is never dropped (that would change a response's shape), and a declared
field the route left out is not added as null: what a route returns is served as it is. An undeclared
field is logged as a warning, and in the test suite (`STRICT = True`) it fails the request, so a route cannot
grow an undocumented field without a test noticing.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
    model_validator,
)

log = logging.getLogger("pedigree.schemas")

# Set by the test suite's conftest: an undeclared response field is then an error, not a warning.
STRICT = False
_warned: set[tuple[str, frozenset[str]]] = set()


class Out(BaseModel):
    """Base of the response models: undeclared fields are kept (see the module docstring)."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _no_undeclared_fields(self) -> Out:
        extra = self.__pydantic_extra__
        if extra:
            names = frozenset(extra)
            if STRICT:
                raise ValueError(f"{type(self).__name__} does not declare {sorted(names)}")
            if (type(self).__name__, names) not in _warned:
                _warned.add((type(self).__name__, names))
                log.warning("response model %s does not declare %s", type(self).__name__, sorted(names))
        return self

    # No return annotation on purpose: pydantic would take a `dict[str, Any]` as the serialised schema
    # and every response model would read as a free-form object in the OpenAPI document.
    @model_serializer(mode="wrap")
    def _as_given(self, handler: SerializerFunctionWrapHandler):
        # A field the route left out stays out: optional fields mean "may be absent" (a role that may
        # not see it, a view without it), and filling them with null would change the response.
        given = self.model_fields_set
        return {k: v for k, v in handler(self).items() if k in given}


# Times leave the services as ISO-8601 strings (app.core.sql.iso); declaring them as datetimes would
# re-serialise them (a "+00:00" offset becomes "Z"), so they stay strings with the date-time format.
IsoTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
# Free-form JSON objects: example content, provenance metadata, hyperparameters, event data.
JsonObject = dict[str, Any]


class LifecycleOut(Out):
    """The life of a job a trainer claims over HTTP (a training run, an evaluation): one wire protocol
    (start, events with heartbeats, complete or fail, cancel, reaper), so one set of fields, read the
    same way on both. The subclasses add their own fields after these."""

    id: str
    status: str
    worker_host: str | None
    created_by: str
    cancelled_by: str | None
    created_at: IsoTime
    queued_at: IsoTime | None
    started_at: IsoTime | None
    heartbeat_at: IsoTime | None
    finished_at: IsoTime | None
    event_count: int


class ErrorInfo(BaseModel):
    code: str = Field(description="machine-readable, e.g. not_found, validation_error, name_taken")
    message: str
    details: Any = Field(None, description="for 422 a list of {field | line, code, message}; otherwise "
                                           "an object or null")


class Error(BaseModel):
    """Every 4xx and 5xx answer. Some carry more next to `error` (a rejected import also has its counts
    and line errors), so further top-level fields are allowed."""

    model_config = ConfigDict(extra="allow")

    error: ErrorInfo


T = TypeVar("T")


class Items(Out, Generic[T]):
    """A list that is never paged (it is small by construction: datasets, keys, models)."""

    items: list[T]


class Page(Items[T], Generic[T]):
    """One page of a keyset-paged list: pass `next_cursor` back as `cursor`; null on the last page."""

    next_cursor: str | None


class SeqPage(Items[T], Generic[T]):
    """A page keyed by an integer (an event id, a version number): `next_cursor` is that integer."""

    next_cursor: int | None
