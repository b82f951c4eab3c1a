"""A local TLS stand-in for the Vonage Video REST endpoints dialbridge uses, recording every request.

It answers with the shapes Vonage documents: `POST /session/create` → `[{"session_id", "project_id", "create_dt",
"media_server_url"}]`; `POST /v2/project/{project}/dial` → `{"id", "connectionId", "streamId"}`;
`DELETE /v2/project/{project}/session/{sid}/connection/{cid}` → 204;
`POST /v2/project/{project}/session/{sid}/signal` `{"type", "data"}` → 204 (type ≤ 128, data ≤ 8 kB, else 413; an
unknown session 404); and the Voice API's `PUT /v1/calls/{uuid}` `{"action": hangup|mute|unmute|earmuff|unearmuff}`
→ 204 and `PUT /v1/calls/{uuid}/talk` `{"text", ...}` → 200 `{"message": "Talk started", "uuid"}`.
The project is read from the request's JWT
(`application_id` for the `vonage` SDK's Bearer token, `iss` for the legacy opentok `X-OPENTOK-AUTH`), so a request
for another project gets 403, as at Vonage. Session ids have OpenTok's real form, which the legacy SDK decodes.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
import trustme

DIAL_PATH = re.compile(r"^/v2/project/(?P<project>[^/]+)/dial$")
SIGNAL_PATH = re.compile(r"^/v2/project/(?P<project>[^/]+)/session/(?P<session>[^/]+)/signal$")
CALL_PATH = re.compile(r"^/v1/calls/(?P<uuid>[^/]+)$")
TALK_PATH = re.compile(r"^/v1/calls/(?P<uuid>[^/]+)/talk$")
CALL_ACTIONS = frozenset({"hangup", "mute", "unmute", "earmuff", "unearmuff"})
CONNECTION_PATH = re.compile(r"^/v2/project/(?P<project>[^/]+)/session/(?P<session>[^/]+)/connection/(?P<conn>[^/]+)$")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {name: values[-1] for name, values in parse_qs(self.body.decode()).items()}

    def auth_claims(self) -> dict[str, Any]:
        """The (unverified) claims of the request's JWT, from either SDK's auth header."""
        bearer = self.headers.get("authorization", "")
        token = bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else self.headers.get("x-opentok-auth")
        if not token:
            return {}
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        return claims


@dataclass(frozen=True, slots=True)
class Failure:
    status: int
    body: dict[str, Any]


@dataclass
class VonageStub:
    ca: trustme.CA
    requests: list[RecordedRequest] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)
    connections: set[tuple[str, str]] = field(default_factory=set)  # (session id, connection id) dialled in
    _failures: dict[tuple[str, str], Failure] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), name="vonage-stub", daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def fail(self, method: str, path_kind: str, status: int, message: str = "stub failure") -> None:
        """Make every later request of this kind ("session", "dial", "connection") answer `status`."""
        self._failures[(method, path_kind)] = Failure(status, {"code": status, "message": message})

    def recover(self) -> None:
        self._failures.clear()

    def received(self, method: str | None = None, path_prefix: str = "") -> list[RecordedRequest]:
        with self._lock:
            return [
                r for r in self.requests if (method is None or r.method == method) and r.path.startswith(path_prefix)
            ]

    # ---- the endpoints ------------------------------------------------------------------------------------------
    def answer(self, request: RecordedRequest) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(request)
        project = _project_of(request.auth_claims())
        if project is None:
            return 401, {"code": 401, "message": "missing or invalid JWT"}
        if request.method == "POST" and request.path == "/session/create":
            return self._failure("POST", "session") or self._create_session(project)
        if request.method == "POST" and (match := DIAL_PATH.match(request.path)):
            if match["project"] != project:
                return 403, {"code": 403, "message": "project does not match the JWT"}
            return self._failure("POST", "dial") or self._dial(request.json())
        if request.method == "DELETE" and (match := CONNECTION_PATH.match(request.path)):
            if match["project"] != project:
                return 403, {"code": 403, "message": "project does not match the JWT"}
            return self._failure("DELETE", "connection") or self._disconnect(match["session"], match["conn"])
        if request.method == "POST" and (match := SIGNAL_PATH.match(request.path)):
            if match["project"] != project:
                return 403, {"code": 403, "message": "project does not match the JWT"}
            return self._failure("POST", "signal") or self._signal(match["session"], request.json())
        if request.method == "PUT" and (match := CALL_PATH.match(request.path)):
            body = request.json()
            if not isinstance(body, dict) or body.get("action") not in CALL_ACTIONS:
                return 400, {"type": "BAD_REQUEST", "title": "Bad Request", "detail": "unknown action"}
            return self._failure("PUT", "call") or (204, None)
        if request.method == "PUT" and (match := TALK_PATH.match(request.path)):
            body = request.json()
            if not isinstance(body, dict) or not body.get("text"):
                return 400, {"type": "BAD_REQUEST", "title": "Bad Request", "detail": "text is required"}
            return 200, {"message": "Talk started", "uuid": match["uuid"]}
        return 404, {"code": 404, "message": f"no route {request.method} {request.path}"}

    def _signal(self, session_id: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("type"), str) or not isinstance(body.get("data"), str):
            return 400, {"code": 400, "message": "type and data (strings) are required"}
        if len(body["type"].encode()) > 128 or len(body["data"].encode()) > 8192:
            return 413, {"code": 413, "message": "the type exceeds 128 bytes or the data 8 kB"}
        with self._lock:
            if session_id not in self.sessions:
                return 404, {"code": 404, "message": "session not found"}
        return 204, None

    def _failure(self, method: str, kind: str) -> tuple[int, Any] | None:
        failure = self._failures.get((method, kind))
        return (failure.status, failure.body) if failure else None

    def _create_session(self, project: str) -> tuple[int, Any]:
        raw = f"1~{project}~127.0.0.1~{int(time.time() * 1000)}~{secrets.token_hex(8)}~~MH4"
        session_id = "1_" + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        with self._lock:
            self.sessions.add(session_id)
        created = {"session_id": session_id, "project_id": project, "create_dt": time.ctime(), "media_server_url": ""}
        return 200, [created]

    def _dial(self, body: dict[str, Any]) -> tuple[int, Any]:
        session_id = body.get("sessionId")
        if not body.get("token") or not body.get("sip", {}).get("uri"):
            return 400, {"code": 400, "message": "token and sip.uri are required"}
        with self._lock:
            if session_id not in self.sessions:
                return 404, {"code": 404, "message": "session not found"}
            connection_id = str(uuid.uuid4())
            self.connections.add((session_id, connection_id))
        return 200, {"id": str(uuid.uuid4()), "connectionId": connection_id, "streamId": str(uuid.uuid4())}

    def _disconnect(self, session_id: str, connection_id: str) -> tuple[int, Any]:
        with self._lock:
            if (session_id, connection_id) not in self.connections:
                return 404, {"code": 404, "message": "connection not found"}
            self.connections.discard((session_id, connection_id))
        return 204, None


def _project_of(claims: dict[str, Any]) -> str | None:
    project = claims.get("application_id") or claims.get("iss")
    return str(project) if project else None


def _make_handler(stub: VonageStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = RecordedRequest(
                method=self.command,
                path=self.path,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
            )
            status, payload = stub.answer(request)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
