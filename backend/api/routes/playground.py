"""The playground: ``POST /api/models/{id}/chat`` streams a reply token by token (SSE)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from backend.api.auth import CurrentUser
from backend.api.deps import SessionDep, SettingsDep
from backend.services import playground as svc

router = APIRouter(prefix="/models", tags=["playground"])


class ChatMessage(BaseModel):
    role: str = Field(description="system (first only), user or assistant")
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)
    image: str | None = Field(None, description="base64 (or a data: URL); goes with the first user turn")
    job_id: int | None = Field(None, description="chat with what this training job of the model saved")
    checkpoint: str | None = Field(None, description="with job_id: 'final' (default) or 'checkpoint-STEP'")
    max_new_tokens: int = Field(256, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2, description="0: greedy")
    stream: bool = True


@router.post("/{model_id}/chat", responses={
    200: {"description": "text/event-stream of `token` events ({text}), then `done` ({text}); "
                         "or JSON {reply} with stream=false"},
    422: {"description": "invalid request; `errors` lists every problem"}})
async def chat(model_id: int, body: ChatRequest, session: SessionDep, settings: SettingsDep,
               user: CurrentUser):  # noqa: ANN201
    """Multi-turn chat with an image, with the model's training template and tiling. The
    model is loaded into the API process on first use (see docs/evaluation.md)."""
    messages = [m.model_dump() for m in body.messages]
    gen, prompt = await run_in_threadpool(
        svc.prepare_chat, session, settings, user, model_id, messages=messages, image=body.image,
        job_id=body.job_id, checkpoint=body.checkpoint)
    if not body.stream:
        text = await run_in_threadpool(svc.reply, gen, prompt, body.max_new_tokens, body.temperature)
        return {"reply": text}

    def events() -> Iterator[str]:
        pieces: list[str] = []
        try:
            for piece in svc.stream_reply(gen, prompt, body.max_new_tokens, body.temperature):
                pieces.append(piece)
                yield f"event: token\ndata: {json.dumps({'text': piece})}\n\n"
        except Exception as e:  # the stream has started: report in-band, not as an HTTP status
            yield f"event: error\ndata: {json.dumps({'detail': str(e)})}\n\n"
            return
        yield f"event: done\ndata: {json.dumps({'text': ''.join(pieces).strip()})}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
