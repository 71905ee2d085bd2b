from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from app.core.auth import RunReader
from app.core.db import INT_MAX, SessionDep
from app.core.errors import ValidationFailed
from app.governance import documentation

router = APIRouter(prefix="/v1/models", tags=["governance"])


@router.get("/{name}/versions/{version}/documentation", response_class=HTMLResponse, responses={
    200: {"description": "The technical documentation, Markdown or a printable HTML page",
          "content": {"text/markdown": {"schema": {"type": "string"}}, "text/html": {"schema": {"type": "string"}}}}})
def get_documentation(name: str, version: Annotated[int, Path(ge=1, le=INT_MAX)], session: SessionDep,
                      actor: RunReader, format: str = "md") -> Response:
    """Technical documentation of a model version (EU AI Act Annex IV §2 data items, Art. 10 bias examination,
    evaluations and gates, lineage, erasures, retention), computed from the records; it names the manifest
    sha256, Merkle root and audit chain head it was built from (docs/governance.md)."""
    if format not in ("md", "html"):
        raise ValidationFailed("unknown format; one of md, html",
                               details=[{"field": "format", "code": "invalid", "message": "one of md, html"}])
    facts = documentation.gather(session, name=name, version=version)
    text = documentation.render(facts, format)
    if format == "html":
        return HTMLResponse(text)
    return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")
