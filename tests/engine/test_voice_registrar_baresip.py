"""baresip, a real softphone, registers to `dialbridge serve` with an account naming a room (digest, 401), dials in
(digest again, 407) and is put in that room's conference without a PIN prompt."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.engine.stack import voice_stack, wait_until
from tests.engine.test_voice_baresip import BARESIP, Baresip

pytestmark = [
    pytest.mark.skipif(BARESIP is None, reason="baresip is not installed: make test installs the baresip package"),
    pytest.mark.timeout(90),
]


def test_a_registered_baresip_dials_in_and_joins_its_accounts_room_without_a_pin(tmp_path: Path) -> None:
    # baresip 1.0 (libre 1.1) gives up on any challenge but MD5 (README, SIP_DIGEST_ALGORITHMS).
    accounts = {"DIALBRIDGE_SIP_ACCOUNTS": "alice:s3cret:soft-room", "DIALBRIDGE_SIP_DIGEST_ALGORITHMS": "MD5"}
    with voice_stack(tmp_path, **accounts) as stack:
        session_id = stack.post("/api/rooms", {"room_id": "soft-room"})["session_id"]
        account = f"<sip:alice@{stack.sip_target}>;auth_pass=s3cret;regint=600"
        phone = Baresip(tmp_path / "baresip", freq=650.0, rtp_low=17300, account=account)
        try:
            # Registered before ctrl_tcp is connected (its REGISTER_OK event goes to nobody): read it in its log.
            registered = "200 OK (dialbridge) [1 binding]"
            assert wait_until(lambda: registered in phone.log.read_text(), 10), phone.log.read_text()[-3000:]
            phone.command("dial", f"sip:dialin@{stack.sip_target}")
            phone.wait_event("CALL_ESTABLISHED", timeout=10)
            joined = f"joined conference {session_id}"
            assert wait_until(lambda: joined in stack.log.read_text(), 20), stack.log.read_text()[-3000:]
            # No digit was keyed: the account stood in for the PIN. (The row's status is the engine's latest event,
            # "answered", which lands after the answer webhook wrote in_conference: the store keeps the latest.)
            with sqlite3.connect(stack.database) as db:
                rows = db.execute("SELECT caller, room_id FROM calls").fetchall()
            assert rows == [("alice", "soft-room")]
            phone.command("hangup")
            phone.wait_event("CALL_CLOSED", timeout=5)
        finally:
            phone.close()
