"""A call's final event reaches the application even when it is down as the call ends: the engine retries it with
back-off until acknowledged, and an engine stopped meanwhile leaves it to the next one (issue 16 §1.8). Real
`dialbridge voice` processes, a real SIP call, and an application that answers 503 until it is back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.engine.stack import NccoApp, free_port, voice_engine
from tests.engine.test_voice_sip_edges import CONFERENCE, Peer, RawCall
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(90)


def finals(app: NccoApp, uuid: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(status answered, fields) of every `completed` event the app was sent."""
    return [
        (request.status, request.fields)
        for request in app.recorded("/events")
        if request.fields.get("status") == "completed" and (uuid is None or request.fields.get("uuid") == uuid)
    ]


def one_call(sip_port: int) -> None:
    """A caller that gets in (INVITE, 200, ACK) and hangs up."""
    peer = Peer(sip_port)
    try:
        call = RawCall.place(peer)
        assert call.bye().status == 200
    finally:
        peer.close()


def test_a_final_event_the_application_missed_is_sent_again_until_it_is_acknowledged(tmp_path: Path) -> None:
    with NccoApp(CONFERENCE) as app, voice_engine(tmp_path, **app.env) as engine:
        app.event_status = 503  # the application is restarting as the call ends
        one_call(engine.sip_port)
        wait_until(lambda: len(finals(app)) >= 3, 15, "the final event tried again after a failure")
        assert {status for status, _ in finals(app)} == {503}
        assert "dialbridge_voice_final_events_pending 1.0" in engine.metrics()
        app.event_status = 200  # back
        wait_until(lambda: any(status == 200 for status, _ in finals(app)), 20, "the final event acknowledged")
        count = len(finals(app))
        time.sleep(2.5)  # once acknowledged, never sent again
        assert len(finals(app)) == count
        assert "dialbridge_voice_final_events_pending 0.0" in engine.metrics()
        assert "Traceback" not in engine.log.read_text()


def test_a_final_event_unacknowledged_when_the_engine_stops_is_sent_by_the_next_engine(tmp_path: Path) -> None:
    with NccoApp(CONFERENCE) as app:
        app.event_status = 503
        sip_port = free_port()
        with voice_engine(tmp_path, sip_port=sip_port, **app.env) as engine:
            one_call(engine.sip_port)
            wait_until(lambda: len(finals(app)) >= 1, 10, "the final event sent")
        _, sent = finals(app)[0]
        app.event_status = 200
        with voice_engine(tmp_path, sip_port=sip_port, **app.env):  # the same voice dir and port: the same journal
            wait_until(lambda: any(status == 200 for status, _ in finals(app)), 20, "the next engine sending it")
        delivered = [fields for status, fields in finals(app) if status == 200]
        assert delivered == [sent]  # the very event the call ended with (not one made up at the restart), once
