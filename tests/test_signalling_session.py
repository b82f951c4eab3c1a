"""The signalling state machine alone: no sockets, no clock, deterministic stream ids."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from dialbridge.engine.rooms.signalling import (
    CLOSE_DUPLICATE_CONNECTION,
    CLOSE_FORCE_DISCONNECTED,
    MAX_MESSAGE_CHARS,
    Deliver,
    Hangup,
    JoinRefused,
    Output,
    SignallingSession,
)

NOW = 1_800_000_000.0


def make_session() -> SignallingSession:
    counter = itertools.count(1)
    return SignallingSession("emb_test", new_stream_id=lambda: f"st_{next(counter)}")


def to(outputs: list[Output], connection_id: str) -> list[dict[str, Any]]:
    return [o.message for o in outputs if isinstance(o, Deliver) and o.to == connection_id]


def types(outputs: list[Output], connection_id: str) -> list[str]:
    return [m["type"] for m in to(outputs, connection_id)]


def send(session: SignallingSession, connection_id: str, **message: Any) -> list[Output]:
    return session.receive(connection_id, json.dumps(message), now=NOW)


def joined(*ids: str) -> SignallingSession:
    session = make_session()
    for connection_id in ids:
        session.join(connection_id, data="", may_publish=True, now=NOW)
    return session


def test_joining_tells_the_newcomer_who_is_there_and_the_others_that_it_came() -> None:
    session = joined("a")
    send(session, "a", type="publish", hasAudio=True, hasVideo=True)
    outputs = session.join("b", data='{"name":"Bo"}', may_publish=True, now=NOW)

    [connected] = to(outputs, "b")
    assert connected["type"] == "connected"
    assert connected["connectionId"] == "b"
    assert [c["connectionId"] for c in connected["connections"]] == ["a"]
    assert [(s["streamId"], s["connectionId"]) for s in connected["streams"]] == [("st_1", "a")]
    [created] = to(outputs, "a")
    assert created == {
        "type": "connectionCreated",
        "connection": {"connectionId": "b", "data": '{"name":"Bo"}', "creationTime": int(NOW * 1000)},
    }


def test_a_second_join_with_the_same_connection_id_is_refused() -> None:
    session = joined("a")
    with pytest.raises(JoinRefused) as refused:
        session.join("a", data="", may_publish=True, now=NOW)
    assert refused.value.code == CLOSE_DUPLICATE_CONNECTION
    assert session.connection_ids == ["a"]


def test_publishing_acknowledges_the_publisher_and_announces_the_stream_to_the_others() -> None:
    session = joined("a", "b", "c")
    outputs = send(session, "a", type="publish", requestId=7, name="cam", hasAudio=False, hasVideo=True)

    [published] = to(outputs, "a")
    assert published["type"] == "published" and published["requestId"] == 7
    assert published["stream"]["streamId"] == "st_1"
    for other in ("b", "c"):
        [created] = to(outputs, other)
        assert created["type"] == "streamCreated"
        assert created["stream"] == published["stream"]
        assert created["stream"]["hasAudio"] is False


def test_a_subscriber_token_may_not_publish() -> None:
    session = make_session()
    session.join("viewer", data="", may_publish=False, now=NOW)
    session.join("b", data="", may_publish=True, now=NOW)
    outputs = send(session, "viewer", type="publish", requestId="r1")
    assert to(outputs, "b") == []
    [error] = to(outputs, "viewer")
    assert error["type"] == "error" and error["requestId"] == "r1"
    assert "does not allow publishing" in error["message"]


def test_leaving_destroys_its_streams_before_its_connection() -> None:
    session = joined("a", "b")
    send(session, "a", type="publish")
    send(session, "a", type="publish")
    outputs = session.leave("a")

    assert to(outputs, "b") == [
        {"type": "streamDestroyed", "streamId": "st_1", "reason": "clientDisconnected"},
        {"type": "streamDestroyed", "streamId": "st_2", "reason": "clientDisconnected"},
        {"type": "connectionDestroyed", "connectionId": "a", "reason": "clientDisconnected"},
    ]
    assert session.leave("a") == []  # the socket's close after a force-disconnect must not repeat the news
    # a newcomer does not hear about the departed stream
    [connected] = to(session.join("c", data="", may_publish=True, now=NOW), "c")
    assert connected["streams"] == [] and [c["connectionId"] for c in connected["connections"]] == ["b"]


def test_unpublish_destroys_only_that_stream_and_only_its_owner_may() -> None:
    session = joined("a", "b")
    send(session, "a", type="publish")
    refused = send(session, "b", type="unpublish", streamId="st_1")
    assert types(refused, "b") == ["error"] and to(refused, "a") == []

    outputs = send(session, "a", type="unpublish", streamId="st_1")
    assert to(outputs, "b") == [{"type": "streamDestroyed", "streamId": "st_1", "reason": "unpublished"}]
    assert session.stream_ids_of("a") == []


def test_signals_are_relayed_to_the_named_member_with_the_true_sender() -> None:
    session = joined("a", "b", "c")
    send(session, "a", type="publish")
    offer = {"type": "offer", "sdp": "v=0\r\n"}
    outputs = send(session, "b", type="signal", to="a", streamId="st_1", kind="offer", data=offer)

    assert outputs == [
        Deliver("a", {"type": "signal", "from": "b", "streamId": "st_1", "kind": "offer", "data": offer})
    ]
    answer = send(session, "a", type="signal", to="b", streamId="st_1", kind="answer", data={"sdp": "x"})
    assert types(answer, "b") == ["signal"]


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        ({"from": "c", "to": "a", "streamId": "st_1", "kind": "offer"}, "'from' may not name another"),
        ({"to": "nobody", "streamId": "st_1", "kind": "offer"}, "no other connection"),
        ({"to": "b", "streamId": "st_1", "kind": "offer"}, "no other connection"),  # to itself
        ({"to": "c", "streamId": "st_1", "kind": "offer"}, "not published by either end"),
        ({"to": "a", "streamId": "st_9", "kind": "offer"}, "not published by either end"),
        ({"to": "a", "streamId": "st_1", "kind": "shout"}, "kind must be one of"),
        ({"to": "a", "streamId": "st_1", "kind": "offer", "data": "sdp"}, "data must be an object"),
    ],
)
def test_forbidden_signals_are_refused_to_the_sender_and_relay_nothing(message: dict[str, Any], complaint: str) -> None:
    session = joined("a", "b", "c")
    send(session, "a", type="publish")
    outputs = send(session, "b", type="signal", **message)
    assert [o.to for o in outputs if isinstance(o, Deliver)] == ["b"]
    [error] = to(outputs, "b")
    assert error["type"] == "error" and complaint in error["message"]


def test_signals_do_not_cross_sessions() -> None:
    here, there = joined("a", "b"), make_session()
    there.join("x", data="", may_publish=True, now=NOW)
    send(there, "x", type="publish")
    outputs = send(here, "a", type="signal", to="x", streamId="st_1", kind="offer", data={})
    assert types(outputs, "a") == ["error"]


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"kind": "publish"}',
        '{"type": "dance"}',
        '{"type": "publish", "hasVideo": "yes"}',
        '{"type": "publish", "name": 5}',
        '{"type": "unpublish"}',
        json.dumps({"type": "ping", "pad": "x" * MAX_MESSAGE_CHARS}),
    ],
)
def test_malformed_messages_get_an_error_and_change_nothing(text: str) -> None:
    session = joined("a", "b")
    outputs = session.receive("a", text, now=NOW)
    assert types(outputs, "a") == ["error"] and to(outputs, "b") == []
    assert session.stream_ids_of("a") == []


def test_force_disconnect_tells_the_member_then_hangs_up_then_tells_the_others() -> None:
    session = joined("a", "b")
    send(session, "a", type="publish")
    outputs = session.force_disconnect("a")

    assert outputs[:2] == [
        Deliver("a", {"type": "sessionDisconnected", "reason": "forceDisconnected"}),
        Hangup("a", CLOSE_FORCE_DISCONNECTED, "disconnected by the server"),
    ]
    assert to(outputs, "b") == [
        {"type": "streamDestroyed", "streamId": "st_1", "reason": "forceDisconnected"},
        {"type": "connectionDestroyed", "connectionId": "a", "reason": "forceDisconnected"},
    ]
    assert session.connection_ids == ["b"]
    assert session.force_disconnect("a") == []


def test_messages_from_a_departed_connection_are_ignored() -> None:
    session = joined("a", "b")
    session.leave("a")
    assert send(session, "a", type="publish") == []


def test_ping_is_answered_with_pong() -> None:
    session = joined("a")
    assert send(session, "a", type="ping") == [Deliver("a", {"type": "pong"})]


def test_a_server_signal_reaches_every_member_once_from_nobody() -> None:
    session = make_session()
    session.join("a", data="", may_publish=True, now=NOW)
    session.join("b", data="", may_publish=True, now=NOW)
    outputs = session.server_signal("participants", '{"participant":{}}')
    for member in ("a", "b"):
        assert to(outputs, member) == [
            {"type": "sessionSignal", "signalType": "participants", "data": '{"participant":{}}', "from": None}
        ]
    assert len(outputs) == 2


def test_a_server_signal_is_held_to_vonages_limits_and_members_cannot_forge_one() -> None:
    session = make_session()
    session.join("a", data="", may_publish=True, now=NOW)
    session.join("b", data="", may_publish=True, now=NOW)
    with pytest.raises(ValueError):
        session.server_signal("participants", "x" * 8193)
    with pytest.raises(ValueError):
        session.server_signal("t" * 129, "")
    forged = send(session, "a", type="sessionSignal", signalType="participants", data="{}")
    assert types(forged, "b") == [] and types(forged, "a") == ["error"]
