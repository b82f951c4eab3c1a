"""The answer, input and event webhooks over HTTP, with a real SQLite file behind them."""

from __future__ import annotations

import asyncio
import random
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from dialbridge.conference.webhooks import MAX_FIELD
from dialbridge.config import Settings
from dialbridge.engine.calls.payloads import CallInfo, input_payload
from dialbridge.web.app import create_app
from dialbridge.web.webhooks import WEBHOOKS, query_fields
from dialbridge.webhook_signing import WebhookSignatures
from tests.conftest import FakeClock, on_both_databases
from tests.helpers import actions, answer, conversation_name, enter, make_room, run_async
from tests.test_callflow import VONAGE_MODELS


@pytest.fixture
def client(client_both_ways: httpx.Client) -> httpx.Client:
    return client_both_ways


def test_answer_asks_for_the_pin_with_input_posting_to_the_public_url(client: TestClient) -> None:
    make_room(client, "standup")
    ncco = answer(client, "call-1")
    assert actions(ncco) == ["talk", "input"]
    collect = ncco[1]
    assert collect["eventUrl"] == ["https://dialbridge.example.test/webhooks/input"]
    assert collect["dtmf"] == {"maxDigits": 6, "timeOut": 5, "submitOnHash": True}
    for action in ncco:
        VONAGE_MODELS[action["action"]].model_validate(action)


def test_answer_accepts_post_json_as_well(client: TestClient) -> None:
    response = client.post("/webhooks/answer", json={"uuid": "c", "from": "1", "to": "2"})
    assert response.status_code == 200
    assert actions(response.json()) == ["talk", "input"]


def test_call_with_the_session_header_of_a_room_joins_it_directly(client: TestClient) -> None:
    room = make_room(client, "standup")
    ncco = answer(client, "bridge-1", caller="sip-bridge", **{"SipHeader_X-OpenTok-SessionId": room["session_id"]})
    assert ncco == [{"action": "conversation", "name": room["session_id"]}]


def test_a_call_from_a_sip_account_naming_a_room_joins_it_without_a_pin(client: TestClient) -> None:
    room = make_room(client, "standup")
    ncco = answer(client, "soft-1", caller="alice", sip_account="alice", sip_account_room="standup")
    # as a right PIN: joining, "first participant", the keypad's asynchronous input, the conversation
    assert actions(ncco) == ["talk", "talk", "input", "conversation"]
    assert conversation_name(ncco) == room["session_id"]


def test_a_sip_account_naming_no_room_gets_the_pin_prompt(client: TestClient) -> None:
    make_room(client, "standup")
    ncco = answer(client, "soft-2", caller="alice", sip_account="alice", sip_account_room="gone")
    assert actions(ncco) == ["talk", "input"]


def test_session_header_of_no_room_gets_the_pin_prompt(client: TestClient) -> None:
    make_room(client, "standup")
    ncco = answer(client, "c1", **{"SipHeader_X-OpenTok-SessionId": "forged"})
    assert actions(ncco) == ["talk", "input"]


def test_right_pin_joins_the_conversation_named_after_the_rooms_session(client: TestClient) -> None:
    room = make_room(client, "standup")
    answer(client, "call-1")
    ncco = enter(client, "call-1", room["pin"])
    # joining, "first participant" (nobody else is in), the keypad's asynchronous input, the conversation
    assert actions(ncco) == ["talk", "talk", "input", "conversation"]
    assert conversation_name(ncco) == room["session_id"]


def test_legacy_dtmf_format_and_tutorial_paths_work(client: TestClient) -> None:
    room = make_room(client, "standup")
    assert actions(client.get("/nexmo-answer", params={"uuid": "c1", "from": "1"}).json()) == ["talk", "input"]
    response = client.post("/nexmo-dtmf", json={"dtmf": room["pin"], "uuid": "c1", "from": "1"})
    assert conversation_name(response.json()) == room["session_id"]
    assert client.post("/nexmo-events", json={"uuid": "c1", "status": "completed"}).status_code == 204
    assert client.get("/nexmo-events", params={"uuid": "c1", "status": "completed"}).status_code == 204


def test_pin_followed_by_hash_is_accepted(client: TestClient) -> None:
    room = make_room(client, "standup")
    assert conversation_name(enter(client, "c1", room["pin"] + "#")) == room["session_id"]


def test_wrong_or_empty_pin_prompts_again_and_the_third_failure_ends_the_call(client: TestClient) -> None:
    make_room(client, "standup")
    answer(client, "call-1")
    first = enter(client, "call-1", "000000")
    second = enter(client, "call-1", "")
    third = enter(client, "call-1", "111111")
    assert actions(first) == ["talk", "talk", "input"]
    assert actions(second) == ["talk", "talk", "input"]
    assert actions(third) == ["talk"]
    assert "Goodbye" in third[0]["text"]


def test_no_path_yields_a_nameless_conversation(client: TestClient) -> None:
    make_room(client, "standup")
    for digits in ("", "#", "*", "0", "12345678901234567890"):
        ncco = enter(client, f"c-{digits}", digits)
        assert "conversation" not in actions(ncco)


def test_caller_failing_ten_pins_in_fifteen_minutes_is_told_goodbye(client: TestClient, clock: FakeClock) -> None:
    room = make_room(client, "standup")
    caller = "447700900777"
    for attempt in range(10):
        uuid = f"call-{attempt // 3}"
        enter(client, uuid, f"{attempt:06d}" if f"{attempt:06d}" != room["pin"] else "999999", caller)
    # Locked out now: at answer, and even the right PIN is refused.
    assert actions(answer(client, "call-9", caller)) == ["talk"]
    assert conversation_name(enter(client, "call-9", room["pin"], caller)) is None
    # Another caller is not affected.
    assert conversation_name(enter(client, "other", room["pin"], "447700900888")) == room["session_id"]
    # Once the window has passed, the caller may try again.
    clock.advance(15 * 60 + 1)
    assert actions(answer(client, "call-10", caller)) == ["talk", "input"]
    assert conversation_name(enter(client, "call-10", room["pin"], caller)) == room["session_id"]


def test_ten_thousand_random_guesses_from_one_caller_join_no_conference(client: TestClient) -> None:
    pins = {make_room(client, f"room-{n}")["pin"] for n in range(20)}
    rng = random.Random(20261129)
    guesses = [f"{rng.randrange(10**6):06d}" for _ in range(10_000)]
    # The guesser also tries every real PIN once it is locked out: none may work.
    guesses[5_000:5_000] = sorted(pins)
    joined = 0
    for index, guess in enumerate(guesses):
        if index < 10 and guess in pins:
            continue  # a lucky first guess is what the 1 % PIN space fill allows; not what this test is about
        ncco = enter(client, f"attack-{index // 3}", guess, caller="447700900666")
        joined += conversation_name(ncco) is not None
    assert joined == 0


def test_events_are_stored_against_the_call_and_its_room(client: TestClient, settings: Settings) -> None:
    room = make_room(client, "standup")
    answer(client, "call-1")
    enter(client, "call-1", room["pin"])
    for status in ("started", "ringing", "answered"):
        response = client.post("/webhooks/events", json={"uuid": "call-1", "status": status, "from": "1"})
        assert response.status_code == 204 and response.content == b""
    completed = {
        "uuid": "call-1",
        "conversation_uuid": "CON-call-1",
        "status": "completed",
        "from": "447700900001",
        "to": "14155550100",
        "timestamp": "2026-11-29T12:00:00.000Z",
        "start_time": "2026-11-29T11:58:00.000Z",
        "end_time": "2026-11-29T12:00:00.000Z",
        "duration": "120",
        "rate": "0.01",
        "price": "0.02",
        "network": "23410",
    }
    assert client.post("/webhooks/events", json=completed).status_code == 204
    svc = client.app.state.services  # type: ignore[attr-defined]
    call = svc.store.call("call-1")
    assert call.room_id == "standup" and call.status == "completed" and call.duration_s == 120
    events = svc.store.call_events("call-1")
    assert [event["status"] for event in events] == ["started", "ringing", "answered", "completed"]
    assert all(event["room_id"] == "standup" for event in events)
    assert events[-1]["end_time"] == "2026-11-29T12:00:00.000Z"


@on_both_databases
def test_the_engines_answered_event_after_the_call_desk_decided_leaves_its_status(client: TestClient) -> None:
    """The engine posts `answered` once the answer webhook has returned, so it always comes after the call desk
    wrote what the call is (in the room's conference, awaiting its PIN): a progress event must not overwrite that
    (found with SIP accounts: such a caller showed as "answered" and was not counted as present in the room)."""
    room = make_room(client, "standup")
    answer(client, "bridge-1", caller="sip-bridge", **{"SipHeader_X-OpenTok-SessionId": room["session_id"]})
    answer(client, "pin-1")
    for uuid in ("bridge-1", "pin-1"):
        for status in ("started", "ringing", "answered"):
            assert client.post("/webhooks/events", json={"uuid": uuid, "status": status}).status_code == 204
    svc = client.app.state.services  # type: ignore[attr-defined]
    assert (svc.store.call("bridge-1").status, svc.store.call("pin-1").status) == ("in_conference", "awaiting_pin")
    completed = {"uuid": "bridge-1", "status": "completed", "duration": "5"}
    assert client.post("/webhooks/events", json=completed).status_code == 204
    assert svc.store.call("bridge-1").status == "completed"  # a final event still ends it


@on_both_databases
def test_every_field_as_long_as_the_parser_accepts_is_stored(client: TestClient) -> None:
    """PostgreSQL enforces column widths (SQLite ignores them): a value the parser accepts but a column cannot hold
    would be a 500 there."""
    room = make_room(client, "standup")
    uuid, caller = "u" * MAX_FIELD, "4" * MAX_FIELD
    call = {"uuid": uuid, "conversation_uuid": "c" * MAX_FIELD, "from": caller, "to": "1" * MAX_FIELD}
    assert client.get("/webhooks/answer", params=call).status_code == 200
    wrong = "000000" if room["pin"] != "000000" else "111111"
    assert client.post("/webhooks/input", json={**call, "dtmf": {"digits": wrong}}).status_code == 200  # recorded
    times = {name: "t" * MAX_FIELD for name in ("timestamp", "start_time", "end_time")}
    assert client.post("/webhooks/events", json={**call, **times, "status": "completed"}).status_code == 204
    svc = client.app.state.services  # type: ignore[attr-defined]
    call = svc.store.call(uuid)
    assert call is not None and (call.status, call.pin_failures, call.caller) == ("completed", 1, caller)
    [stored] = svc.store.call_events(uuid)
    assert stored["end_time"] == "t" * MAX_FIELD and stored["conversation_uuid"] == "c" * MAX_FIELD
    assert svc.store.caller_failures(caller, 0) == 1


def test_event_for_an_unknown_call_is_still_stored(client: TestClient) -> None:
    assert client.get("/webhooks/events", params={"uuid": "x1", "status": "ringing"}).status_code == 204
    svc = client.app.state.services  # type: ignore[attr-defined]
    assert svc.store.call("x1").status == "ringing"


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/webhooks/input", b"{not json", 400),
        ("/webhooks/input", b"[1, 2]", 422),
        ("/webhooks/input", b'{"dtmf": {"digits": "12ab"}, "uuid": "c"}', 422),
        ("/webhooks/input", b'{"dtmf": {"digits": "1234"}}', 422),
        ("/webhooks/events", b'{"uuid": "c", "status": "exploded"}', 422),
        ("/webhooks/events", b'{"uuid": "c", "status": "completed", "duration": "-3"}', 422),
        ("/webhooks/events", b'{"status": "completed"}', 422),
        ("/webhooks/answer", b'{"uuid": {"nested": 1}}', 422),
    ],
)
def test_bad_payloads_get_a_json_refusal_and_change_nothing(
    client: TestClient, path: str, body: bytes, status: int
) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] and error["message"]
    svc = client.app.state.services  # type: ignore[attr-defined]
    assert svc.store.calls_by_status() == {}


def test_oversized_body_is_refused(client: TestClient) -> None:
    response = client.post("/webhooks/events", content=b"{" + b" " * 70_000 + b"}")
    assert response.status_code == 413


def test_state_survives_a_restart(settings: Settings, clock: FakeClock) -> None:
    with TestClient(create_app(settings, clock=clock)) as first:
        room = make_room(first, "standup")
        answer(first, "call-1")
        enter(first, "call-1", "000000" if room["pin"] != "000000" else "111111")
    with TestClient(create_app(settings, clock=clock)) as second:
        assert second.get("/api/rooms/standup").json() == room
        assert conversation_name(enter(second, "call-1", room["pin"])) == room["session_id"]
        svc = second.app.state.services  # type: ignore[attr-defined]
        call = svc.store.call("call-1")
        assert call is not None and call.pin_failures == 1


def test_answer_queries_are_read_exactly_as_parse_qsl_reads_them() -> None:
    """The answer webhook's own query parser must agree with the standard library's on every input: plain fields,
    percent- and plus-encoding, UTF-8, broken escapes, blank values, repeated names (the last wins)."""
    rng = random.Random(7)
    pieces = ["a", "B", "=", "&", "%", "%2", "%41", "%C3%A9", "%ZZ", "+", " ", "é", "x=1", "&&", "==", "SipHeader_X-1"]
    for _ in range(20_000):
        query = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12))).encode()
        assert query_fields(query) == dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)), query
    assert query_fields(b"region_url=https%3A%2F%2Fapi-eu-1.vonage.com&from=447700900001&from=2") == {
        "region_url": "https://api-eu-1.vonage.com",
        "from": "2",
    }


def test_the_openapi_document_lists_every_webhook_path_with_its_methods(client: httpx.Client) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    for path, webhook in WEBHOOKS.items():
        assert sorted(paths.get(path, {})) == sorted(method.lower() for method in webhook.methods), path
    assert "/api/rooms" in paths  # FastAPI's own routes are still there


# ---- retried input webhooks ---------------------------------------------------------------------------------------
# The engine (as Vonage) sends an input webhook again when it got no answer in time: the same body, signed anew.

RETRY_SECRET = "retry-signature-secret-0123456789"
RETRY_CALLER = "447700900123"


@pytest.fixture
def signed_app(settings: Settings, clock: FakeClock) -> Any:
    return create_app(settings.model_copy(update={"signature_secret": SecretStr(RETRY_SECRET)}), clock=clock)


def entry_body(uuid: str, digits: str, at: float, *, timed_out: bool = False) -> bytes:
    """An input webhook's body as the embedded engine builds it for one entry on call `uuid`, entered at `at`."""
    call = CallInfo(uuid=uuid, conversation_uuid="CON-" + uuid, from_=RETRY_CALLER, to="14155550100")
    return orjson.dumps(input_payload(call, digits, timed_out, at))


def signed_headers(body: bytes, clock: FakeClock) -> dict[str, str]:
    """Each delivery carries a token of its own (a new jti), as the engine's and Vonage's retries do."""
    token = WebhookSignatures(RETRY_SECRET).sign(body, clock())
    return {"content-type": "application/json", "authorization": f"Bearer {token}"}


def deliver(client: TestClient, body: bytes, clock: FakeClock) -> Any:
    response = client.post("/webhooks/input", content=body, headers=signed_headers(body, clock))
    assert response.status_code == 200, response.text
    return response.json()


def attempts(app: Any, uuid: str) -> tuple[int, int]:
    """(failed entries on the call, wrong guesses by its caller)."""
    store = app.state.services.store
    call = store.call(uuid)
    return (call.pin_failures if call else 0), store.caller_failures(RETRY_CALLER, 0)


@pytest.mark.parametrize("right_pin", [False, True], ids=["wrong-pin", "right-pin"])
def test_an_input_delivered_twice_is_decided_once_and_answered_alike(
    signed_app: Any, clock: FakeClock, right_pin: bool
) -> None:
    with TestClient(signed_app) as client:
        room = make_room(client, "standup")
        body = entry_body("call-1", room["pin"] if right_pin else "000000", clock())
        first = deliver(client, body, clock)
        clock.advance(5.1)  # the sender's read timeout, then its retry
        second = deliver(client, body, clock)
        assert second == first
        assert attempts(signed_app, "call-1") == ((0, 0) if right_pin else (1, 1))
        assert (conversation_name(first) == room["session_id"]) is right_pin


def test_a_retry_of_the_entry_that_ends_the_call_says_goodbye_again_and_counts_nothing(
    signed_app: Any, clock: FakeClock
) -> None:
    with TestClient(signed_app) as client:
        make_room(client, "standup")
        for n in range(2):
            deliver(client, entry_body("call-1", f"00000{n}", clock()), clock)
            clock.advance(10)
        last = entry_body("call-1", "000009", clock())
        goodbye = deliver(client, last, clock)
        assert actions(goodbye) == ["talk"] and "Goodbye" in goodbye[0]["text"]
        assert deliver(client, last, clock) == goodbye
        assert attempts(signed_app, "call-1") == (3, 3)


def test_different_entries_on_one_call_are_each_an_attempt(signed_app: Any, clock: FakeClock) -> None:
    """The same digits keyed again later, other digits under the same timestamp (no retry sends those) and another
    call's entry at the same moment are entries of their own: each is decided and counted, so nothing but an
    identical delivery escapes the count."""
    with TestClient(signed_app) as client:
        make_room(client, "standup")
        entered_at = clock()
        deliver(client, entry_body("call-1", "000000", entered_at), clock)
        clock.advance(10)
        deliver(client, entry_body("call-1", "000000", clock()), clock)
        assert attempts(signed_app, "call-1") == (2, 2)
        deliver(client, entry_body("call-2", "000000", entered_at), clock)
        deliver(client, entry_body("call-3", "111111", clock()), clock)
        deliver(client, entry_body("call-3", "222222", clock()), clock)
        assert attempts(signed_app, "call-2") == (1, 5)
        assert attempts(signed_app, "call-3") == (2, 5)


@on_both_databases
def test_an_input_delivered_twice_at_once_is_decided_once(signed_app: Any, clock: FakeClock) -> None:
    async def twice_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=signed_app), base_url="http://test") as client:
            body = entry_body("call-1", "000000", clock())
            deliveries = [
                client.post("/webhooks/input", content=body, headers=signed_headers(body, clock)) for _ in range(2)
            ]
            return list(await asyncio.gather(*deliveries))

    responses = run_async(twice_at_once())
    assert [response.status_code for response in responses] == [200, 200]
    assert responses[0].json() == responses[1].json()
    assert actions(responses[0].json()) == ["talk", "talk", "input"]
    assert attempts(signed_app, "call-1") == (1, 1)
