from __future__ import annotations

import json

from fastapi import APIRouter
from fastapi.responses import Response

from backend.api.auth import CurrentUser
from backend.api.deps import DbRoute, SessionDep
from backend.api.schemas import MetaRequest
from backend.services import meta as svc

router = APIRouter(prefix="/meta", tags=["datasets"], route_class=DbRoute)


@router.post("", responses={422: {"description": "bad repeat_time, duplicate names/annotations, bad mixture"},
                            409: {"description": "a dataset is not ready"}})
def build_meta(body: MetaRequest, session: SessionDep, user: CurrentUser, download: bool = False) -> Response:
    """The meta JSON in the seed's format from registered datasets (per-dataset ``repeat_time``,
    ``data_augment``, ``max_dynamic_patch``), merged with ``mixture`` (a meta JSON, checked).
    Answers ``{meta, summary}`` (effective sample counts after ``repeat_time``); with
    ``download=1`` the meta file itself, as an attachment."""
    out = svc.build(session, user, [d.model_dump() for d in body.datasets], body.mixture, body.on_conflict)
    if download:
        text = json.dumps(out["meta"], indent=2, ensure_ascii=False) + "\n"
        return Response(text, media_type="application/json",
                        headers={"Content-Disposition": 'attachment; filename="meta.json"'})
    return Response(json.dumps(out, ensure_ascii=False), media_type="application/json")
