"""SIP dialogs (RFC 3261 section 12): the peer-to-peer state that in-dialog requests are built from and matched to.

A dialog is identified by Call-ID + local tag + remote tag. It keeps the local/remote URIs, the CSeq counters, the
remote target (the peer's Contact) and the route set (Record-Route; reversed on the UAC side, kept in order on the
UAS side as 12.1.1 says). `as_uas` serves incoming calls; `as_uac` is where outbound calls start (12.1.2: route set
reversed, remote target from the 2xx Contact, local CSeq continuing from the INVITE's).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dialbridge.sip.message import (
    MAGIC_COOKIE,
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
)

Address = tuple[str, int]
DialogId = tuple[str, str, str]  # (Call-ID, local tag, remote tag)


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a request built by the dialog goes first: the first Route, or the remote target (RFC 3261 8.1.2)."""

    host: str
    port: int
    transport: str  # "udp" | "tcp"
    # False: the URI named no port and `port` is the default, so for a host name RFC 3263 4.2 asks DNS for SRV
    # records first (the shell does: `Outgoing.port_named`).
    port_named: bool = True

    @property
    def address(self) -> Address:
        return (self.host.strip("[]"), self.port)


@dataclass(eq=False, slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: NameAddr  # without tag
    remote_uri: NameAddr  # without tag
    remote_target: SipUri
    route_set: list[NameAddr] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    secure: bool = False
    state: DialogState = DialogState.EARLY

    @property
    def id(self) -> DialogId:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uas(cls, invite: SipRequest, local_tag: str, fallback_target: SipUri) -> Dialog:
        """UAS dialog from a dialog-creating request (RFC 3261 12.1.1).

        Route set = Record-Route in order; remote target = Contact (or `fallback_target`, the source address, for
        peers that omit it); remote CSeq = the request's; local CSeq starts at a fresh value, here 0 then 1 for our
        first request (any value works; the counters are independent per direction).
        """
        contacts = invite.contacts
        remote_target = contacts[0].uri if contacts else fallback_target
        route_set = [NameAddr.parse(value) for value in invite.headers.get_all("Record-Route")]
        from_addr = invite.from_addr
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=from_addr.tag or "",
            local_uri=invite.to_addr.without_tag(),
            remote_uri=from_addr.without_tag(),
            remote_target=remote_target,
            route_set=route_set,
            remote_seq=invite.cseq.number,
            secure=invite.request_uri.scheme == "sips",
        )

    @classmethod
    def as_uac(cls, invite: SipRequest, response: SipResponse) -> Dialog:
        """UAC dialog from our INVITE and a 1xx-with-tag or 2xx to it (RFC 3261 12.1.2).

        Route set = the response's Record-Route reversed; remote target = its Contact (else the Request-URI); local
        CSeq continues from the INVITE's; remote CSeq unknown until the peer sends a request.
        """
        contacts = response.contacts
        remote_target = contacts[0].uri if contacts else invite.request_uri
        route_set = [NameAddr.parse(value) for value in reversed(response.headers.get_all("Record-Route"))]
        from_addr = invite.from_addr
        to_addr = response.to_addr
        return cls(
            call_id=invite.call_id,
            local_tag=from_addr.tag or "",
            remote_tag=to_addr.tag or "",
            local_uri=from_addr.without_tag(),
            remote_uri=to_addr.without_tag(),
            remote_target=remote_target,
            route_set=route_set,
            local_seq=invite.cseq.number,
            remote_seq=None,
            secure=invite.request_uri.scheme == "sips",
            state=DialogState.CONFIRMED if 200 <= response.status < 300 else DialogState.EARLY,
        )

    def check_remote_seq(self, request: SipRequest) -> bool:
        """RFC 3261 12.2.2: an in-dialog request with a CSeq lower than the last one is out of order (answer 500).

        ACK and CANCEL reuse the INVITE's number, so they are never checked here.
        """
        number = request.cseq.number
        if self.remote_seq is not None and number <= self.remote_seq:
            return False
        self.remote_seq = number
        return True

    def update_remote_target(self, request: SipRequest) -> None:
        """Target refresh (12.2.2): a re-INVITE or UPDATE with Contact moves the remote target."""
        try:
            contacts = request.contacts
        except SipParseError:
            return
        if contacts:
            self.remote_target = contacts[0].uri

    def next_hop(self, default_transport: str) -> NextHop:
        target = self.route_set[0].uri if self.route_set else self.remote_target
        transport = target.transport or default_transport
        default_port = 5061 if target.scheme == "sips" else 5060
        port_named = target.port is not None
        return NextHop(target.host, target.port or default_port, transport, port_named)

    def create_request(
        self,
        method: str,
        *,
        via_host: str,
        via_port: int,
        transport: str,
        branch: str,
        user_agent: str,
        contact: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        cseq: int | None = None,
    ) -> SipRequest:
        """An in-dialog request (RFC 3261 12.2.1.1): loose routing puts the remote target in the Request-URI and
        the whole route set in Route; a strict first route (no ;lr) takes the Request-URI and the remote target is
        appended as the last Route."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        routes = [str(route) for route in self.route_set]
        request_uri = str(self.remote_target)
        if self.route_set and "lr" not in self.route_set[0].uri.params:
            request_uri = str(self.route_set[0].uri.without_params())
            routes = [str(route) for route in self.route_set[1:]] + [f"<{self.remote_target}>"]
        headers = Headers()
        if not branch.startswith(MAGIC_COOKIE):
            branch = MAGIC_COOKIE + branch
        headers.add("Via", f"SIP/2.0/{transport.upper()} {via_host}:{via_port};rport;branch={branch}")
        headers.add("Max-Forwards", "70")
        headers.add("From", str(self.local_uri.with_tag(self.local_tag)))
        remote = self.remote_uri.with_tag(self.remote_tag) if self.remote_tag else self.remote_uri
        headers.add("To", str(remote))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        for route in routes:
            headers.add("Route", route)
        if contact is not None:
            headers.add("Contact", contact)
        headers.add("User-Agent", user_agent)
        if body:
            headers.add("Content-Type", content_type or "application/sdp")
        return SipRequest(method=method, uri=request_uri, headers=headers, body=body)


def response_record_routes(invite: SipRequest, response: SipResponse) -> None:
    """RFC 3261 12.1.1: a UAS copies Record-Route from the request into every dialog-creating response."""
    for value in invite.headers.get_all("Record-Route"):
        response.headers.add("Record-Route", value)
