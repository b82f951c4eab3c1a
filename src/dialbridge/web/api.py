"""The JSON API for rooms."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict, Field

from dialbridge.conference.rooms import Room
from dialbridge.rooms import random_room_id
from dialbridge.web.errors import ApiError
from dialbridge.web.pages import check_room_id
from dialbridge.web.responses import JsonResponse
from dialbridge.web.services import Services, services

router = APIRouter(prefix="/api")
ServicesDep = Annotated[Services, Depends(services)]


class RoomOut(BaseModel):
    room_id: str
    session_id: str
    pin: str
    dial_in_number: str | None


class NewRoom(BaseModel):
    model_config = ConfigDict(extra="forbid")
    room_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")


def room_out(room: Room, svc: Services) -> RoomOut:
    return RoomOut(
        room_id=room.room_id,
        session_id=room.session_id,
        pin=room.pin,
        dial_in_number=svc.settings.dial_in_number,
    )


@router.get("/rooms/{room_id}", response_model=RoomOut)
async def get_room(room_id: str, svc: ServicesDep) -> RoomOut:
    check_room_id(room_id)
    room = await svc.rooms.find(room_id)
    if room is None:
        raise ApiError(404, "room_not_found", f"no room {room_id!r}; GET /room/{room_id} or POST /api/rooms creates it")
    return room_out(room, svc)


@router.post("/rooms", status_code=201, response_model=RoomOut)
async def create_room(svc: ServicesDep, body: Annotated[NewRoom | None, Body()] = None) -> JsonResponse:
    wanted = body.room_id if body else None
    room_id = wanted or random_room_id()
    result = await svc.rooms.get_or_create(room_id)
    if not result.created:
        if wanted is None:  # a random id collided (≈ never): the caller asked for *a* room, so retry
            result = await svc.rooms.get_or_create(random_room_id())
        else:
            raise ApiError(409, "room_exists", f"room {room_id!r} already exists; GET /api/rooms/{room_id} reads it")
    return JsonResponse(room_out(result.room, svc).model_dump(), status_code=201)
