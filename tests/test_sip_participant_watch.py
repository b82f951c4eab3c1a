"""SipParticipantWatch: the call of a SIP participant whose gateway died is ended, whatever the order in which the
gateway's death and the call's answer webhook reach the app."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from dialbridge.store.dial_outs import DialOut
from dialbridge.web import voice
from dialbridge.web.services import Services
from tests.helpers import run_async, visit


class RecordingControl:
    name = "recording"

    def __init__(self) -> None:
        self.hung_up: list[str] = []

    async def mute(self, call_uuid: str, muted: bool) -> None:
        raise AssertionError("the watch only hangs up")

    async def hang_up(self, call_uuid: str) -> None:
        self.hung_up.append(call_uuid)

    async def talk(self, call_uuid: str, text: str) -> None:
        raise AssertionError("the watch only hangs up")


@pytest.fixture
def svc(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> Services:
    visit(client, "standup")
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    store = services.dial_outs.store
    store.start(dial_out_id="do_1", room_id="standup", kind="conference", target="sip:dialin@127.0.0.1", now=1.0)
    store.mark_live("do_1", platform_call_id="gw-1", connection_id="conn-1", stream_id=None)
    monkeypatch.setattr(voice, "ORPHAN_GRACE_S", 0.0)
    return services


def test_a_call_linked_after_its_participant_left_is_hung_up(svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway died between its INVITE and the engine's answer webhook: the watch reads the dial-out before
    the answer links its call, and must still end that call, or it stays in the phone conference for good."""
    store = svc.dial_outs.store
    read = store.live_by_connection

    def read_then_the_answer_links(connection_id: str) -> DialOut | None:
        found = read(connection_id)
        assert store.mark_call("do_1", "CALL-1")
        return found

    monkeypatch.setattr(store, "live_by_connection", read_then_the_answer_links)
    control = RecordingControl()

    run_async(voice.SipParticipantWatch(svc, control)._end_call_of("conn-1"))

    assert control.hung_up == ["CALL-1"]
    dial_out = store.get("do_1")  # closed by the call's final event, as every bridge call's end closes it
    assert dial_out is not None and dial_out.state == "live"


def test_a_dial_out_with_no_call_is_closed_as_failed_and_a_late_call_is_refused(svc: Services) -> None:
    control = RecordingControl()

    run_async(voice.SipParticipantWatch(svc, control)._end_call_of("conn-1"))

    assert control.hung_up == []
    dial_out = svc.dial_outs.store.get("do_1")
    assert dial_out is not None and (dial_out.state, dial_out.progress) == ("failed", "failed")
    assert svc.dial_outs.store.mark_call("do_1", "LATE-CALL") is False
