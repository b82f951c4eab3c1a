"""A registrar for softphones (RFC 3261 10.3), sans-I/O: accounts from configuration, digest (RFC 8760), bindings.

`Registrar.register` answers a REGISTER: 401 with a SHA-256 and an MD5 challenge until it carries credentials of an
account, then 200 listing the account's bindings (Contact with expires). `authenticate` serves any other request
from an account (an INVITE: 407). The clock comes in with every call; `next_timer()` / `on_timer(now)` drop bindings
as they expire.

Rules:
- A binding's lifetime is the Contact's `expires` parameter, else the Expires header, else `default_expires`;
  capped at `max_expires`; below `min_expires` (but not 0) the request gets 423 with Min-Expires; 0 removes it.
  `Contact: *` with `Expires: 0` removes them all.
- A binding keeps where the REGISTER came from (the packet's source and transport; over TCP that names the
  connection), not only the Contact, which behind NAT names an address nobody can reach. Once that connection
  closes (`flow_closed`) the binding stays, marked: the phone is then reached at its Contact, over a new one.
- Bounded: `bindings_per_account` (a new one replaces the binding that expires soonest: a phone behind NAT that
  re-registers from a new port leaves its old binding behind) and `bindings_total` (past it, 503).
- Nonces are ours (unpredictable), live `nonce_lifetime_s`, at most `max_nonces` at once (the oldest forgotten);
  each nonce-count is accepted once and only upwards (RFC 7616 3.4: a replayed request is refused). Credentials
  that are right but name a nonce that is unknown, expired or already used at that count get a fresh challenge
  with stale=true, so the phone answers it without asking its user; wrong credentials get 403.
"""

from __future__ import annotations

import heapq
import random as random_module
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from dialbridge.sip.auth import DigestCredentials, build_challenge, parse_params, verify_authorization
from dialbridge.sip.message import NameAddr, SipParseError, SipRequest, SipUri, split_quoted

Address = tuple[str, int]

ACCOUNT_USER = re.compile(r"^[A-Za-z0-9_.!~*'()+-]{1,64}$")  # a SIP URI user part without escapes
ACCOUNT_ROOM = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # conference.rooms.ROOM_ID
ACCOUNT_FORMAT = "user:password or user:password:room-id"
# Strongest first: a client takes the topmost it supports (RFC 8760 2.4); MD5 for phones that know nothing else.
# Some phones fail on any challenge but MD5, whatever its place (baresip 1.x's libre, pjsip before 2.14): for
# them, `digest_algorithms` is ("MD5",).
DIGEST_ALGORITHMS = ("SHA-512-256", "SHA-256", "MD5")
DEFAULT_DIGEST_ALGORITHMS = ("SHA-256", "MD5")


@dataclass(frozen=True, slots=True)
class SipAccount:
    username: str
    password: str = field(repr=False)  # never in logs or reprs
    room: str | None = None  # a room its calls join without a PIN


def parse_accounts(entries: Iterable[str], *, where: str = "entry") -> tuple[SipAccount, ...]:
    """Accounts from `user:password[:room-id]` entries (blank ones skipped). Raises ValueError naming the bad entry
    by its position (`where` 1, 2, ...) and user, never its password."""
    accounts: dict[str, SipAccount] = {}
    for number, entry in enumerate(entries, 1):
        entry = entry.strip()
        if not entry:
            continue
        parts = entry.split(":")
        user = parts[0]
        if not ACCOUNT_USER.match(user):
            raise ValueError(f"{where} {number}: the user must be 1 to 64 characters of A-Z, a-z, 0-9 and _.!~*'()+-")
        if len(parts) not in (2, 3) or not parts[1]:
            raise ValueError(f"{where} {number} ({user}): not {ACCOUNT_FORMAT} (a password has no ':')")
        room = parts[2] if len(parts) == 3 else None
        if room is not None and not ACCOUNT_ROOM.match(room):
            raise ValueError(f"{where} {number} ({user}): a room id is 1 to 64 characters of A-Z, a-z, 0-9, _ and -")
        if user in accounts:
            raise ValueError(f"{where} {number}: account {user} is listed twice")
        accounts[user] = SipAccount(user, parts[1], room)
    return tuple(accounts.values())


@dataclass(frozen=True, slots=True)
class RegistrarLimits:
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    bindings_per_account: int = 10
    bindings_total: int = 10_000
    nonce_lifetime_s: float = 300.0
    max_nonces: int = 10_000


@dataclass(frozen=True, slots=True)
class Binding:
    contact: str  # the Contact URI as the phone wrote it
    source: Address  # where its REGISTER came from: where requests to the phone go (NAT)
    transport: str
    expires_at: float
    refreshed_at: float  # its latest REGISTER
    flow_open: bool = True  # False: its TCP connection is gone, and `source` with it (reach the Contact instead)
    call_id: str = ""  # of the REGISTER that made or refreshed it, with its CSeq: a late, reordered one is refused
    cseq: int = 0


@dataclass(frozen=True, slots=True)
class Reply:
    """A response for the agent to send: status and the headers it needs."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class _Nonce:
    issued_at: float
    last_count: int = 0  # the highest nonce-count accepted with it


class Registrar:
    def __init__(
        self,
        accounts: Iterable[SipAccount],
        *,
        domain: str,
        limits: RegistrarLimits | None = None,
        digest_algorithms: tuple[str, ...] = DEFAULT_DIGEST_ALGORITHMS,
        random: random_module.Random | None = None,
    ) -> None:
        unknown = [algorithm for algorithm in digest_algorithms if algorithm not in DIGEST_ALGORITHMS]
        if unknown or not digest_algorithms:
            raise ValueError(f"digest algorithms must be some of {', '.join(DIGEST_ALGORITHMS)}, not {unknown}")
        self.digest_algorithms = digest_algorithms
        self.accounts = {account.username: account for account in accounts}
        self.domain = domain.strip("[]").lower()
        self.realm = domain
        self.limits = limits or RegistrarLimits()
        self._random = random if random is not None else random_module.SystemRandom()
        self._nonces: dict[str, _Nonce] = {}  # in the order issued: the oldest first
        self._bindings: dict[str, dict[str, Binding]] = {}  # by account, by Contact URI
        self._expiry: list[tuple[float, str, str]] = []  # heap of (expires_at, account, contact); stale entries skipped
        self._by_flow: dict[Address, set[tuple[str, str]]] = {}  # TCP bindings by their connection: (account, contact)
        self._total = 0

    # --- requests ----------------------------------------------------------------------------------------------------

    def is_local_user(self, uri: SipUri) -> bool:
        """Whether `uri` (a From) names one of our accounts at our domain: its requests must authenticate."""
        return uri.user in self.accounts and uri.host.strip("[]").lower() == self.domain

    def authenticate(self, request: SipRequest, now: float, *, proxy: bool) -> SipAccount | Reply:
        """The account whose credentials `request` carries, or the challenge (401, or 407 when `proxy`) or refusal
        (403) to answer it with."""
        header = "Proxy-Authorization" if proxy else "Authorization"
        for value in request.headers.get_all(header):
            try:
                params = parse_params(value)[1]
            except ValueError:
                continue
            if params.get("realm") != self.realm:
                continue  # meant for another realm (a proxy's)
            account = self.accounts.get(params.get("username", ""))
            credentials = DigestCredentials(account.username, account.password) if account else None
            if credentials is None or not verify_authorization(
                value, method=request.method, credentials=credentials, realm=self.realm, body=request.body
            ):
                return Reply(403)
            nonce = self._nonces.get(params.get("nonce", ""))
            count = _nonce_count(params.get("nc"))
            if nonce is None or now >= nonce.issued_at + self.limits.nonce_lifetime_s or count <= nonce.last_count:
                return self._challenge(now, proxy=proxy, stale=True)
            nonce.last_count = count
            assert account is not None
            return account
        return self._challenge(now, proxy=proxy, stale=False)

    def register(self, request: SipRequest, source: Address, transport: str, now: float) -> Reply:
        self._forget_nonces(now)
        outcome = self.authenticate(request, now, proxy=False)
        if isinstance(outcome, Reply):
            return outcome
        if request.to_addr.uri.user != outcome.username:
            return Reply(403)  # 10.3 step 6: an account registers its own address only
        try:
            changes = self._requested(request)
        except (SipParseError, ValueError):
            return Reply(400)
        existing = self._bindings.get(outcome.username, {})
        touched = list(existing) if changes is None else [contact for contact, _ in changes if contact in existing]
        if any(_out_of_order(existing[contact], request) for contact in touched):
            return Reply(500)  # 10.3 steps 6-7: a REGISTER older than what made the binding changes nothing
        if changes is None:  # Contact: * with Expires: 0
            for contact in list(self._bindings.get(outcome.username, {})):
                self._remove(outcome.username, contact)
            return Reply(200)
        too_brief = [seconds for _, seconds in changes if 0 < seconds < self.limits.min_expires]
        if too_brief:
            return Reply(423, (("Min-Expires", str(self.limits.min_expires)),))
        bindings = self._bindings.setdefault(outcome.username, {})
        added = sum(1 for contact, seconds in changes if seconds and contact not in bindings)
        if self._total + added > self.limits.bindings_total:
            return Reply(503, (("Retry-After", "60"),))
        for contact, seconds in changes:
            if seconds == 0:
                self._remove(outcome.username, contact)
            else:
                expires_at = now + min(seconds, self.limits.max_expires)
                self._bind(outcome.username, contact, source, transport, expires_at, now, request)
        if not self._bindings.get(outcome.username):
            self._bindings.pop(outcome.username, None)  # only removals: leave no empty table behind
        return Reply(200, self._contacts(outcome.username, now))

    def bindings(self, username: str) -> list[Binding]:
        return list(self._bindings.get(username, {}).values())

    def latest_binding(self, username: str) -> Binding | None:
        """The account's binding most recently refreshed (its phone last heard from), where a call to the account
        goes; None when no phone is registered. Forking to them all in parallel (RFC 3261 16.7) is a later step."""
        return max(self._bindings.get(username, {}).values(), key=lambda b: b.refreshed_at, default=None)

    def flow_closed(self, source: Address) -> None:
        """The TCP connection from `source` is gone: the bindings made over it are reached at their Contact now."""
        for username, contact in self._by_flow.pop(source, ()):
            binding = self._bindings[username][contact]
            self._bindings[username][contact] = replace(binding, flow_open=False)

    def open_flows(self) -> set[Address]:
        """The TCP connections bound phones registered over and are still reached on: to keep open."""
        return set(self._by_flow)

    # --- timers ------------------------------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        return self._expiry[0][0] if self._expiry else None

    def on_timer(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, username, contact = heapq.heappop(self._expiry)
            binding = self._bindings.get(username, {}).get(contact)
            if binding is not None and binding.expires_at <= now:  # else refreshed since: a later entry stands
                self._remove(username, contact)
        self._forget_nonces(now)

    def table_sizes(self) -> dict[str, int]:
        return {
            "bindings": self._total,
            "nonces": len(self._nonces),
            "expiry_heap": len(self._expiry),
            "flows": len(self._by_flow),
        }

    # --- details -----------------------------------------------------------------------------------------------------

    def _requested(self, request: SipRequest) -> list[tuple[str, int]] | None:
        """(Contact URI, seconds) for each Contact; None for `*` with Expires: 0. Raises on a malformed one."""
        values = [item.strip() for value in request.headers.get_all("Contact") for item in split_quoted(value, ",")]
        header = request.headers.get("Expires")
        default = _seconds(header) if header is not None else self.limits.default_expires
        if "*" in values:
            if len(values) != 1 or header is None or default != 0:
                raise ValueError("Contact: * needs Expires: 0 and no other contact (10.3 step 6)")
            return None
        changes: list[tuple[str, int]] = []
        for value in values:
            contact = NameAddr.parse(value)
            expires = contact.params.get("expires")
            changes.append((str(contact.uri), _seconds(expires) if expires is not None else default))
        return changes

    def _bind(
        self,
        username: str,
        contact: str,
        source: Address,
        transport: str,
        expires_at: float,
        now: float,
        request: SipRequest,
    ) -> None:
        bindings = self._bindings.setdefault(username, {})
        if contact not in bindings:
            if len(bindings) >= self.limits.bindings_per_account:
                self._remove(username, min(bindings.values(), key=lambda b: b.expires_at).contact)
                bindings = self._bindings.setdefault(username, bindings)
            self._total += 1
        self._unflow(username, bindings.get(contact))
        bindings[contact] = Binding(
            contact, source, transport, expires_at, now, call_id=request.call_id, cseq=request.cseq.number
        )
        if transport != "udp":
            self._by_flow.setdefault(source, set()).add((username, contact))
        heapq.heappush(self._expiry, (expires_at, username, contact))

    def _remove(self, username: str, contact: str) -> None:
        bindings = self._bindings.get(username)
        removed = bindings.pop(contact, None) if bindings is not None else None
        if bindings is None or removed is None:
            return
        self._unflow(username, removed)
        self._total -= 1
        if not bindings:
            del self._bindings[username]
        if not self._total:
            self._expiry.clear()  # nothing left to expire: drop the stale entries too

    def _unflow(self, username: str, binding: Binding | None) -> None:
        """`binding` (replaced or removed) is no longer one of its connection's."""
        if binding is None or not binding.flow_open or binding.transport == "udp":
            return
        flow = self._by_flow.get(binding.source)
        if flow is not None:
            flow.discard((username, binding.contact))
            if not flow:
                del self._by_flow[binding.source]

    def _contacts(self, username: str, now: float) -> tuple[tuple[str, str], ...]:
        return tuple(
            ("Contact", f"<{b.contact}>;expires={max(0, round(b.expires_at - now))}")
            for b in self._bindings.get(username, {}).values()
        )

    def _challenge(self, now: float, *, proxy: bool, stale: bool) -> Reply:
        nonce = f"{self._random.getrandbits(128):032x}"
        if len(self._nonces) >= self.limits.max_nonces:
            del self._nonces[next(iter(self._nonces))]
        self._nonces[nonce] = _Nonce(issued_at=now)
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        headers = tuple(
            (name, build_challenge(self.realm, nonce, algorithm=algorithm, stale=stale))
            for algorithm in self.digest_algorithms
        )
        return Reply(407 if proxy else 401, headers)

    def _forget_nonces(self, now: float) -> None:
        # Issued in time order with one lifetime: the expired ones are at the front.
        lifetime = self.limits.nonce_lifetime_s
        while self._nonces:
            nonce = next(iter(self._nonces))
            if self._nonces[nonce].issued_at + lifetime > now:
                break
            del self._nonces[nonce]


def _seconds(text: str) -> int:
    value = text.strip()
    if not value.isdigit() or len(value) > 10:
        raise ValueError(f"bad expires value {text!r}")
    return int(value)


def _nonce_count(text: str | None) -> int:
    """The nc of an answer; one without qop (RFC 2069) has none and counts as the nonce's first and only use."""
    try:
        return int(text, 16) if text else 1
    except ValueError:
        return 0  # never above a nonce's last count: refused as a replay


def _out_of_order(binding: Binding, request: SipRequest) -> bool:
    """RFC 3261 10.3 step 7: a REGISTER of the same Call-ID as the one that made the binding, whose CSeq is not
    higher, came late (UDP reorders, a retransmission outlived its transaction): it must not undo a newer one."""
    return binding.call_id == request.call_id and request.cseq.number <= binding.cseq
