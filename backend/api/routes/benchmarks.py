"""``/api/benchmarks``: the evaluation guide's benchmarks, registered from shared storage."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from backend.api.auth import CurrentUser
from backend.api.deps import SettingsDep
from backend.api.schemas import Name, ServerPath
from backend.services import benchmarks as svc

router = APIRouter(prefix="/benchmarks", tags=["benchmarks"])


@router.get("")
def list_benchmarks(settings: SettingsDep, user: CurrentUser) -> list[dict]:  # noqa: ARG001 - any user
    return svc.list_benchmarks(settings)


@router.get("/{name}")
def get_benchmark(name: Name, settings: SettingsDep, user: CurrentUser) -> dict:  # noqa: ARG001
    return svc.get_registered(settings, name)


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="a benchmark of GET /api/benchmarks, e.g. textvqa_val")
    path: ServerPath = Field(description="its folder in the guide's layout on the server, under VLSTUDIO_DATA_ROOTS")
    replace: bool = Field(False, description="replace a registered one (a failed replace keeps it)")


@router.post("", status_code=201)
async def register(body: RegisterRequest, settings: SettingsDep, user: CurrentUser) -> dict:
    """Read the layout (every problem with file, line and field: 422, nothing registered)."""
    return await run_in_threadpool(svc.register, settings, user, body.name, body.path, body.replace)
