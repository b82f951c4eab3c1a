"""A room's phone controls (Bearer participant token of the room):

- `POST /api/rooms/{room_id}/dial-out`: dial the phone conference or a phone;
- `POST /api/rooms/{room_id}/hang-up` `{"call_id"}`: end a dial-out (its id, `do_…`) or any phone participant of the
  room (its call uuid, as the participant list names it);
- `POST /api/rooms/{room_id}/mute` `{"call_id", "muted"}`: mute or unmute a phone participant, server-side;
- `GET /api/rooms/{room_id}/participants`: browsers and phones, numbers masked (any role).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from dialbridge.conference.rooms import Room
from dialbridge.config import E164
from dialbridge.dialout import (
    BadSipUri,
    DialOutNotAllowed,
    DialOutNotLive,
    DialOutUnavailable,
    UnknownDialOut,
    check_sip_uri,
)
from dialbridge.roster import CallNotLive, UnknownCall
from dialbridge.store.dial_outs import ConferenceDialOutOpen, DialOut, DialOutLimitReached
from dialbridge.tokens import Role
from dialbridge.web.errors import ApiError, bearer_token
from dialbridge.web.pages import check_room_id
from dialbridge.web.responses import JsonResponse
from dialbridge.web.services import Services, services

router = APIRouter(prefix="/api")
ServicesDep = Annotated[Services, Depends(services)]


class DialOutRequest(BaseModel):
    """`{}` dials the room into the phone conference; `{"number": "+E164"}` dials that phone (through the SIP trunk
    on the embedded backend); `{"sip_uri": "sip:user@host"}` calls that SIP address directly."""

    model_config = ConfigDict(extra="forbid")
    number: str | None = Field(default=None, pattern=E164.pattern, description="E.164, e.g. +14155550100")
    sip_uri: str | None = Field(
        default=None, max_length=256, description="a SIP address to call directly, e.g. sip:alice@pbx.example.com"
    )

    @field_validator("sip_uri")
    @classmethod
    def _sip_uri(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_sip_uri(value)  # its syntax here; whether this backend can call it, when dialled
            except BadSipUri as exc:
                raise PydanticCustomError("sip_uri", str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_target(self) -> DialOutRequest:
        if self.number is not None and self.sip_uri is not None:
            raise PydanticCustomError("one_target", "send either number or sip_uri, not both")
        return self

    @field_validator("number", mode="before")
    @classmethod
    def _e164(cls, value: object) -> object:
        # Said in the caller's words before pydantic's own "String should match pattern '^\+[1-9]…'" is reached.
        if isinstance(value, str) and not E164.match(value):
            raise PydanticCustomError(
                "e164", "must be a phone number in E.164 form: + country code and number, e.g. +14155550100"
            )
        return value


class HangUpRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    call_id: str = Field(min_length=1, max_length=64)


class MuteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    call_id: str = Field(min_length=1, max_length=256)
    muted: bool


class DialOutOut(BaseModel):
    call_id: str
    connection_id: str | None
    stream_id: str | None
    kind: str
    target: str
    state: str


def dial_out_out(dial_out: DialOut) -> dict[str, object]:
    return DialOutOut(
        call_id=dial_out.id,
        connection_id=dial_out.connection_id,
        stream_id=dial_out.stream_id,
        kind=dial_out.kind,
        target=dial_out.target,
        state=dial_out.state,
    ).model_dump()


# The roles that may place and end the room's calls (calls cost money and reach strangers): not a subscriber.
CALLING_ROLES = frozenset({Role.PUBLISHER, Role.MODERATOR})


async def participant_room(
    room_id: str, svc: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> Room:
    """The room, when the caller holds a valid participant token of it whose role may place calls (401 for no
    valid token, 404 for no such room, 403 for a role that may not)."""
    room, role = await _room_and_role(room_id, svc, authorization)
    if role not in CALLING_ROLES:
        raise ApiError(
            403,
            "role_not_allowed",
            f"a {role.value}'s token may not place or end calls; a publisher's or moderator's may",
        )
    return room


async def member_room(room_id: str, svc: ServicesDep, authorization: Annotated[str | None, Header()] = None) -> Room:
    """The room, for a valid participant token of it, whatever its role (401, 404 as above)."""
    room, _role = await _room_and_role(room_id, svc, authorization)
    return room


async def _room_and_role(room_id: str, svc: Services, authorization: str | None) -> tuple[Room, Role]:
    token = bearer_token(authorization, "the room's participant token")
    now = svc.clock()
    svc.tokens.verify(token, now=now)  # a forged or expired token learns nothing about rooms
    check_room_id(room_id)
    room = await svc.rooms.find(room_id)
    if room is None:
        raise ApiError(404, "room_not_found", f"no room {room_id!r}")
    claims = svc.tokens.verify(token, now=now, session_id=room.session_id)
    return room, claims.role


RoomDep = Annotated[Room, Depends(participant_room)]
MemberRoomDep = Annotated[Room, Depends(member_room)]


@router.post("/rooms/{room_id}/dial-out", status_code=201, response_model=DialOutOut)
async def dial_out(
    room: RoomDep, svc: ServicesDep, body: Annotated[DialOutRequest | None, Body()] = None
) -> JsonResponse:
    number = body.number if body else None
    sip_uri = body.sip_uri if body else None
    try:
        if sip_uri is not None:
            placed = await svc.dial_outs.dial_sip_uri(room, sip_uri)
        elif number is None:
            placed = await svc.dial_outs.dial_conference(room)
        else:
            placed = await svc.dial_outs.dial_phone(room, number)
    except DialOutUnavailable as exc:
        # The server is not set up to dial (a setting is missing): nothing the caller can change, unlike a 409's
        # conflict with the room's state.
        raise ApiError(503, "dial_out_unavailable", str(exc)) from exc
    except DialOutNotAllowed as exc:
        raise ApiError(403, "dial_out_not_allowed", str(exc)) from exc
    except BadSipUri as exc:
        raise ApiError(422, "invalid_sip_uri", f"sip_uri {exc}") from exc
    except DialOutLimitReached as exc:
        limit = svc.settings.dial_outs_per_room_per_hour
        raise ApiError(
            429,
            "dial_out_limit_reached",
            f"room {room.room_id!r} has placed {limit} calls within the last hour, as many as this server allows "
            f"(DIALBRIDGE_DIAL_OUTS_PER_ROOM_PER_HOUR); try again in {exc.retry_after_s} s",
            {"Retry-After": str(exc.retry_after_s)},
        ) from exc
    except ConferenceDialOutOpen as exc:
        open_call = await svc.dial_outs.open_conference(room)
        which = f" (call {open_call.id}, {open_call.state})" if open_call else ""
        raise ApiError(
            409,
            "dial_out_in_progress",
            f"room {room.room_id!r} is already dialled into the conference{which}; hang up first",
        ) from exc
    svc.roster.dial_out_changed(room, placed)
    return JsonResponse(dial_out_out(placed), status_code=201)


DIAL_OUT_PREFIX = "do_"  # dialout.py's ids; a call uuid never starts so (Vonage's and the engine's are UUIDs)


@router.post("/rooms/{room_id}/hang-up")
async def hang_up(room: RoomDep, svc: ServicesDep, body: HangUpRequest) -> JsonResponse:
    """A dial-out id ends that dial-out (as before); a call uuid of the room's phone participant ends that call."""
    if not body.call_id.startswith(DIAL_OUT_PREFIX):
        with _call_errors():
            return JsonResponse(await svc.roster.hang_up(room, body.call_id))
    try:
        ended = await svc.dial_outs.hang_up(room, body.call_id)
    except UnknownDialOut as exc:
        raise ApiError(404, "call_not_found", str(exc)) from exc
    except DialOutNotLive as exc:
        raise ApiError(409, "call_not_live", str(exc)) from exc
    svc.roster.dial_out_changed(room, ended)
    return JsonResponse(dial_out_out(ended))


@router.post("/rooms/{room_id}/mute")
async def mute(room: RoomDep, svc: ServicesDep, body: MuteRequest) -> JsonResponse:
    """Server-side mute of one phone participant of the room (its audio reaches nobody; it still hears)."""
    with _call_errors():
        return JsonResponse(await svc.roster.set_muted(room, body.call_id, body.muted))


@router.get("/rooms/{room_id}/participants")
async def participants(room: MemberRoomDep, svc: ServicesDep) -> JsonResponse:
    """Browsers (embedded backend) and phone participants, numbers masked; changes arrive as `participants`
    signals on the room's session."""
    return JsonResponse({"room_id": room.room_id, "participants": await svc.roster.participants(room)})


@router.get("/rooms/{room_id}/phone-bridge")
async def phone_bridge(room: MemberRoomDep, svc: ServicesDep) -> dict[str, Any]:
    """The room's open conference dial-out, `{"bridge": {"call_id", "state"}}` or `{"bridge": null}` (any participant
    token of the room): a page that did not dial it learns the id to hang it up with."""
    bridge = await svc.dial_outs.open_conference(room)
    return {"bridge": {"call_id": bridge.id, "state": bridge.state} if bridge else None}


@contextmanager
def _call_errors() -> Iterator[None]:
    try:
        yield
    except UnknownCall as exc:
        raise ApiError(
            404, "call_not_found", f"{exc}; use a call_id from GET /api/rooms/{{room_id}}/participants"
        ) from exc
    except CallNotLive as exc:
        raise ApiError(409, "call_not_live", str(exc)) from exc
