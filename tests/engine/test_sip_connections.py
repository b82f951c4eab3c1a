"""The bounds on SIP's TCP connections, driven with a fake clock (times are plain numbers of seconds)."""

from __future__ import annotations

from dialbridge.sip.connections import REFUSAL_LOG_INTERVAL_S, Admission, SipTcpConnections, TcpConnectionLimits

LIMITS = TcpConnectionLimits(per_source=3, total=5, idle_s=60.0, incomplete_message_s=10.0)
NOTHING_IN_USE: frozenset[tuple[str, int]] = frozenset()


def test_connections_beyond_the_per_source_cap_are_refused_and_a_closed_one_frees_a_place() -> None:
    connections = SipTcpConnections(LIMITS)
    assert [connections.admit(("10.0.0.1", port), 0.0).accepted for port in range(1000, 1005)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert connections.admit(("10.0.0.2", 1000), 0.0).accepted, "another source is counted on its own"
    connections.closed(("10.0.0.1", 1001))
    connections.closed(("10.0.0.1", 1003))  # a refused one was never counted: closing it frees nothing
    assert connections.admit(("10.0.0.1", 2000), 1.0).accepted
    assert not connections.admit(("10.0.0.1", 2001), 1.0).accepted


def test_connections_beyond_the_total_cap_are_refused() -> None:
    connections = SipTcpConnections(LIMITS)
    for host in range(5):
        assert connections.admit((f"10.0.0.{host}", 5060), 0.0).accepted
    refused = connections.admit(("10.0.0.9", 5060), 0.0)
    assert not refused.accepted and refused.limit == "total"
    assert len(connections) == 5
    connections.closed(("10.0.0.0", 5060))
    assert connections.admit(("10.0.0.9", 5060), 0.0).accepted


def test_refusals_are_logged_once_per_source_per_interval() -> None:
    connections = SipTcpConnections(TcpConnectionLimits(per_source=1))
    connections.admit(("10.0.0.1", 1), 0.0)
    connections.admit(("10.0.0.2", 1), 0.0)
    logged = [connections.admit(("10.0.0.1", port), float(port)).log for port in range(2, 40)]
    assert logged == [True] + [False] * 37
    assert connections.admit(("10.0.0.2", 2), 5.0) == Admission(accepted=False, limit="per-source", log=True)
    assert connections.admit(("10.0.0.1", 99), 2.0 + REFUSAL_LOG_INTERVAL_S).log
    # After a long quiet spell (the check has meanwhile forgotten the source), its next refusal is logged again.
    connections.to_close(10 * REFUSAL_LOG_INTERVAL_S, NOTHING_IN_USE)
    assert connections.admit(("10.0.0.1", 100), 10 * REFUSAL_LOG_INTERVAL_S).log


def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    connections = SipTcpConnections(LIMITS)
    peer = ("10.0.0.1", 40000)
    connections.admit(peer, 0.0)
    connections.received(peer, 30.0, incomplete=False)  # a whole message at 30 s
    assert connections.to_close(89.0, NOTHING_IN_USE) == []
    assert connections.to_close(90.0, NOTHING_IN_USE) == [peer]
    assert connections.to_close(91.0, NOTHING_IN_USE) == [peer], "named again until it is closed"
    connections.closed(peer)
    assert connections.to_close(200.0, NOTHING_IN_USE) == [] and len(connections) == 0


def test_a_connection_that_never_sends_anything_is_idle() -> None:
    connections = SipTcpConnections(LIMITS)
    connections.admit(("10.0.0.1", 40000), 0.0)
    assert connections.to_close(60.0, NOTHING_IN_USE) == [("10.0.0.1", 40000)]


def test_crlf_keepalives_count_as_activity() -> None:
    connections = SipTcpConnections(LIMITS)
    peer = ("10.0.0.1", 40000)
    connections.admit(peer, 0.0)
    for t in range(30, 300, 30):  # RFC 5626 pings every 30 s: the framer leaves nothing buffered
        connections.received(peer, float(t), incomplete=False)
        assert connections.to_close(float(t) + 59.0, NOTHING_IN_USE) == []
    assert connections.to_close(270.0 + 60.0, NOTHING_IN_USE) == [peer]


def test_a_connection_carrying_a_call_is_kept_however_long_it_is_silent() -> None:
    connections = SipTcpConnections(LIMITS)
    call, idle = ("10.0.0.1", 40000), ("10.0.0.1", 40001)
    connections.admit(call, 0.0)
    connections.admit(idle, 0.0)
    assert connections.to_close(3600.0, {call}) == [idle]
    # Once the call has ended, its connection has the whole idle timeout before it is closed.
    assert connections.to_close(3601.0, NOTHING_IN_USE) == [idle]
    assert connections.to_close(3600.0 + 59.0, NOTHING_IN_USE) == [idle]
    assert connections.to_close(3600.0 + 60.0, NOTHING_IN_USE) == [call, idle]


def test_a_message_not_completed_within_the_timeout_closes_the_connection() -> None:
    connections = SipTcpConnections(LIMITS)
    stalled, slow = ("10.0.0.1", 40000), ("10.0.0.1", 40001)
    connections.admit(stalled, 0.0)
    connections.admit(slow, 0.0)
    connections.received(stalled, 1.0, incomplete=True)
    connections.received(slow, 1.0, incomplete=True)
    connections.received(slow, 8.0, incomplete=False)  # completed in 7 s
    connections.received(slow, 9.0, incomplete=True)  # the next one begins
    # Trickling bytes is activity but does not restart the message's clock (a slowloris is still cut off).
    for t in (3.0, 5.0, 7.0, 9.0):
        connections.received(stalled, t, incomplete=True)
    assert connections.to_close(10.9, NOTHING_IN_USE) == []
    assert connections.to_close(11.0, NOTHING_IN_USE) == [stalled]
    # Even a connection carrying a call: a sender stuck mid-message cannot be understood any more.
    assert connections.to_close(19.0, {slow}) == [stalled, slow]
