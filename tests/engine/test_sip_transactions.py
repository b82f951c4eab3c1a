"""Transaction state machines with a fake clock: the retransmission schedules and timeouts peers rely on."""

from __future__ import annotations

from dialbridge.sip.dialog import Dialog, DialogState
from dialbridge.sip.message import SipRequest, SipResponse, build_response, parse_message
from dialbridge.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
    ResponseReceived,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    TransactionState,
    TransactionTimedOut,
    TransportFailed,
    client_key,
    server_key,
)


def request(method: str = "INVITE", branch: str = "z9hG4bK-1", to_tag: str = "", cseq: int = 1) -> SipRequest:
    to = "<sip:service@10.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    data = (
        f"{method} sip:service@10.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.2:5061;branch={branch}\r\n"
        "From: <sip:sipp@10.0.0.2>;tag=abc\r\n"
        f"To: {to}\r\n"
        "Call-ID: call-1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Route: <sip:proxy.example.com;lr>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


def response_to(req: SipRequest, status: int) -> SipResponse:
    return build_response(req, status, to_tag="remote")


def run_until(transaction: ServerTransaction | ClientTransaction, end: float) -> list[float]:
    """Fire timers up to `end`; return the times at which something was sent."""
    sent_at: list[float] = []
    while (deadline := transaction.next_timer()) is not None and deadline <= end:
        transaction.on_timer(deadline)
        outbox, _ = transaction.take_output()
        sent_at += [deadline] * len(outbox)
    return sent_at


# --- server INVITE -------------------------------------------------------------------------------------------------


def test_server_invite_resends_latest_provisional_on_retransmission() -> None:
    invite = request()
    tx = ServerInviteTransaction(invite, 0.0, reliable=False)
    assert tx.take_output() == ([], [])
    tx.on_request(invite, 0.1)
    assert tx.take_output()[0] == []  # nothing to resend before the TU said anything
    trying, ringing = build_response(invite, 100), response_to(invite, 180)
    tx.respond(trying, 0.0)
    tx.respond(ringing, 0.2)
    assert tx.take_output()[0] == [trying, ringing]
    tx.on_request(invite, 0.3)
    assert tx.take_output()[0] == [ringing]
    assert tx.next_timer() is None  # Proceeding has no timers


def test_server_invite_non_2xx_timer_g_and_h_on_udp() -> None:
    invite = request()
    tx = ServerInviteTransaction(invite, 0.0, reliable=False)
    busy = response_to(invite, 486)
    tx.respond(busy, 0.0)
    assert tx.take_output()[0] == [busy]
    assert tx.state is TransactionState.COMPLETED
    # Timer G: T1, 2T1, 4T1, then capped at T2 -> 0.5, 1.5, 3.5, 7.5, 11.5, ... up to Timer H at 32 s.
    sent = run_until(tx, 31.9)
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    tx.on_timer(32.0)
    assert tx.terminated
    assert tx.take_output() == ([], [TransactionTimedOut()])


def test_server_invite_ack_stops_retransmissions_then_timer_i() -> None:
    invite = request()
    tx = ServerInviteTransaction(invite, 0.0, reliable=False)
    busy = response_to(invite, 486)
    tx.respond(busy, 0.0)
    tx.take_output()
    tx.on_request(invite, 0.2)  # retransmitted INVITE in Completed: resend final
    assert tx.take_output()[0] == [busy]
    ack = request("ACK", cseq=1, to_tag="remote")
    assert server_key(ack) == server_key(invite)
    tx.on_request(ack, 0.3)
    assert tx.state is TransactionState.CONFIRMED
    assert tx.next_timer() == 0.3 + 5.0  # Timer I = T4
    tx.on_request(ack, 1.0)
    tx.on_request(invite, 1.0)  # absorbed in Confirmed
    assert tx.take_output() == ([], [])
    tx.on_timer(5.3)
    assert tx.terminated


def test_server_invite_over_tcp_has_no_timer_g_and_no_timer_i() -> None:
    invite = request()
    tx = ServerInviteTransaction(invite, 0.0, reliable=True)
    tx.respond(response_to(invite, 404), 0.0)
    tx.take_output()
    assert tx.next_timer() == 32.0  # only Timer H
    tx.on_request(request("ACK", to_tag="remote"), 1.0)
    assert tx.terminated


def test_server_invite_2xx_goes_to_accepted_and_absorbs_retransmissions() -> None:
    invite = request()
    tx = ServerInviteTransaction(invite, 0.0, reliable=False)
    ok = response_to(invite, 200)
    tx.respond(ok, 0.0)
    assert tx.take_output()[0] == [ok]
    assert tx.state is TransactionState.ACCEPTED
    tx.on_request(invite, 0.4)
    assert tx.take_output()[0] == []  # RFC 6026: the TU retransmits the 2xx, not the transaction
    tx.respond(ok, 0.5)
    assert tx.take_output()[0] == [ok]  # TU retransmissions pass through
    tx.respond(response_to(invite, 500), 0.6)
    assert tx.take_output()[0] == []
    tx.on_timer(32.0)  # Timer L
    assert tx.terminated


# --- server non-INVITE ---------------------------------------------------------------------------------------------


def test_server_non_invite_timer_j() -> None:
    bye = request("BYE", to_tag="t", cseq=2)
    tx = ServerNonInviteTransaction(bye, 0.0, reliable=False)
    tx.on_request(bye, 0.1)
    assert tx.take_output()[0] == []  # Trying: absorbed
    ok = response_to(bye, 200)
    tx.respond(ok, 0.2)
    tx.on_request(bye, 1.0)
    assert tx.take_output()[0] == [ok, ok]
    assert tx.next_timer() == 0.2 + 32.0
    tx.on_timer(32.2)
    assert tx.terminated
    tcp = ServerNonInviteTransaction(bye, 0.0, reliable=True)
    tcp.respond(ok, 0.0)
    assert tcp.terminated  # Timer J = 0 on reliable transports


# --- client non-INVITE ---------------------------------------------------------------------------------------------


def test_client_non_invite_timer_e_and_f() -> None:
    bye = request("BYE", to_tag="t", cseq=2)
    tx = ClientNonInviteTransaction(bye, 0.0, reliable=False)
    assert tx.take_output()[0] == [bye]
    sent = run_until(tx, 31.9)
    assert sent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    tx.on_timer(32.0)
    assert tx.terminated
    assert tx.take_output() == ([], [TransactionTimedOut()])


def test_client_non_invite_provisional_slows_e_to_t2_and_final_completes() -> None:
    bye = request("BYE", to_tag="t", cseq=2)
    tx = ClientNonInviteTransaction(bye, 0.0, reliable=False)
    tx.take_output()
    trying = response_to(bye, 100)
    tx.on_response(trying, 0.1)
    assert tx.take_output() == ([], [ResponseReceived(trying)])
    assert run_until(tx, 5.0) == [0.5, 4.5]  # after a 1xx, Timer E fires every T2
    ok = response_to(bye, 200)
    tx.on_response(ok, 5.0)
    assert tx.take_output() == ([], [ResponseReceived(ok)])
    tx.on_response(ok, 5.1)  # retransmitted final: absorbed
    assert tx.take_output() == ([], [])
    assert tx.next_timer() == 10.0  # Timer K = T4
    tx.on_timer(10.0)
    assert tx.terminated
    assert client_key(ok) == tx.key


def test_client_non_invite_over_tcp_only_timer_f() -> None:
    bye = request("BYE", to_tag="t", cseq=2)
    tx = ClientNonInviteTransaction(bye, 0.0, reliable=True)
    tx.take_output()
    assert tx.next_timer() == 32.0
    tx.on_response(response_to(bye, 481), 1.0)
    assert tx.terminated  # Timer K = 0


# --- client INVITE -------------------------------------------------------------------------------------------------


def test_client_invite_timer_a_doubles_without_cap_and_timer_b() -> None:
    invite = request()
    tx = ClientInviteTransaction(invite, 0.0, reliable=False)
    assert tx.take_output()[0] == [invite]
    assert run_until(tx, 31.9) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    tx.on_timer(32.0)
    assert tx.terminated
    assert tx.take_output() == ([], [TransactionTimedOut()])


def test_client_invite_non_2xx_is_acked_by_the_transaction() -> None:
    invite = request()
    tx = ClientInviteTransaction(invite, 0.0, reliable=False)
    tx.take_output()
    ringing = response_to(invite, 180)
    tx.on_response(ringing, 0.2)
    assert tx.take_output() == ([], [ResponseReceived(ringing)])
    assert tx.next_timer() is None  # Proceeding: no A, no B
    busy = response_to(invite, 486)
    tx.on_response(busy, 3.0)
    outbox, events = tx.take_output()
    assert events == [ResponseReceived(busy)]
    (ack,) = outbox
    assert isinstance(ack, SipRequest)
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert ack.headers.get_all("Via") == invite.headers.get_all("Via")  # same branch as the INVITE
    assert ack.to_addr.tag == "remote"
    assert str(ack.cseq) == "1 ACK"
    assert ack.headers.get_all("Route") == invite.headers.get_all("Route")
    tx.on_response(busy, 4.0)  # retransmitted final: ACK again, not passed up
    assert tx.take_output() == ([ack], [])
    assert tx.next_timer() == 3.0 + 32.0  # Timer D
    tx.on_timer(35.0)
    assert tx.terminated


def test_client_invite_2xx_goes_to_accepted_and_passes_every_2xx_up() -> None:
    invite = request()
    tx = ClientInviteTransaction(invite, 0.0, reliable=True)
    tx.take_output()
    assert tx.next_timer() == 32.0  # TCP: Timer B only
    ok = response_to(invite, 200)
    tx.on_response(ok, 1.0)
    assert tx.take_output() == ([], [ResponseReceived(ok)])  # no ACK from the transaction for a 2xx
    tx.on_response(ok, 1.5)
    assert tx.take_output() == ([], [ResponseReceived(ok)])  # the TU must re-ACK retransmitted 2xx
    assert tx.state is TransactionState.ACCEPTED
    tx.on_timer(33.0)  # Timer M
    assert tx.terminated


def test_outbound_call_shape_client_invite_then_uac_dialog_and_2xx_ack() -> None:
    """How the next issue's outbound calls use this layer: the transaction, then a UAC dialog from the 2xx."""
    invite = request()
    tx = ClientInviteTransaction(invite, 0.0, reliable=False)
    tx.take_output()
    ok = response_to(invite, 200)
    ok.headers.add("Contact", "<sip:service@10.0.0.1:5080>")
    ok.headers.add("Record-Route", "<sip:p2.example.com;lr>")
    ok.headers.add("Record-Route", "<sip:p1.example.com;lr>")
    tx.on_response(ok, 0.3)
    assert tx.take_output() == ([], [ResponseReceived(ok)])
    dialog = Dialog.as_uac(invite, ok)
    assert dialog.state is DialogState.CONFIRMED
    assert (dialog.local_tag, dialog.remote_tag) == ("abc", "remote")
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]  # reversed
    assert dialog.next_hop("udp").address == ("p1.example.com", 5060)
    ack = dialog.create_request(
        "ACK", via_host="10.0.0.2", via_port=5061, transport="udp", branch="z9hG4bK-ack", user_agent="t", cseq=1
    )
    assert ack.uri == "sip:service@10.0.0.1:5080" and str(ack.cseq) == "1 ACK"
    assert ack.to_addr.tag == "remote" and ack.from_addr.tag == "abc"
    bye = dialog.create_request("BYE", via_host="10.0.0.2", via_port=5061, transport="udp", branch="b", user_agent="t")
    assert str(bye.cseq) == "2 BYE"  # local CSeq continues after the INVITE
    assert bye.top_via.branch == "z9hG4bKb"


def test_client_invite_over_tcp_timer_d_is_zero() -> None:
    invite = request()
    tx = ClientInviteTransaction(invite, 0.0, reliable=True)
    tx.on_response(response_to(invite, 603), 1.0)
    assert tx.terminated


# --- matching ------------------------------------------------------------------------------------------------------


def test_server_key_uses_branch_and_separates_cancel() -> None:
    invite = request()
    cancel = request("CANCEL")
    assert server_key(cancel) != server_key(invite)
    assert server_key(cancel, method="INVITE") == server_key(invite)
    assert server_key(request(branch="z9hG4bK-2")) != server_key(invite)


def test_rfc2543_fallback_matches_ack_without_magic_cookie() -> None:
    old_invite = request(branch="1234")
    old_ack = request("ACK", branch="1234", to_tag="ours")
    assert server_key(old_ack) == server_key(old_invite)
    assert server_key(request(branch="1234", cseq=2)) != server_key(old_invite)
    no_branch = parse_message(old_invite.to_bytes().replace(b";branch=1234", b""))
    assert isinstance(no_branch, SipRequest)
    assert server_key(no_branch)[0] == "2543"


def test_transport_error_terminates_and_informs_the_tu() -> None:
    bye = request("BYE", to_tag="t", cseq=2)
    tx = ClientNonInviteTransaction(bye, 0.0, reliable=True)
    tx.take_output()
    tx.transport_failed()
    assert tx.terminated and tx.next_timer() is None
    assert tx.take_output() == ([], [TransportFailed()])
    tx.transport_failed()
    assert tx.take_output() == ([], [])
