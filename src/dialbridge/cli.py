"""`dialbridge serve`, `dialbridge voice`, `dialbridge gateway` and `dialbridge doctor`."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from dialbridge.config import Backend, Settings

if TYPE_CHECKING:
    from dialbridge.credentials import VoiceCredentials
    from dialbridge.server.supervised import SupervisedProcess

SIP_KINDS: Final = (socket.SOCK_DGRAM, socket.SOCK_STREAM)  # the voice engine takes its SIP port for both
TCP: Final = (socket.SOCK_STREAM,)
UDP: Final = (socket.SOCK_DGRAM,)


def _load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "DIALBRIDGE_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"error: {name}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def _bound(host: str, port: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
    """A socket bound to host:port (OSError if it cannot be)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    if kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _bind_problem(
    host: str,
    port: int,
    exc: OSError,
    what: str = "port",
    setting: str = "PORT",
    kinds: tuple[socket.SocketKind, ...] = (socket.SOCK_STREAM,),
) -> str:
    """What a failed bind means to the person starting the server, and what to do."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{what} {port} on {host} is already in use (another dialbridge?); stop that program or "
            f"choose another port: {_another_port(host, port, setting, kinds)} make run"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine; set DIALBRIDGE_{setting[:-4]}HOST=127.0.0.1 or 0.0.0.0"
    if exc.errno == errno.EACCES:
        return f"{what} {port} needs privileges; choose a port above 1023 with DIALBRIDGE_{setting}"
    return f"cannot listen on {host}:{port}: {exc.strerror}"


# Ports a suggestion must not name: those the configuration gives to something else, and those already suggested
# (the voice API's and the gateway's ports were both told to move to the same free port).
_not_to_suggest: set[int] = set()


def _keep_suggestions_off(settings: Settings) -> None:
    _not_to_suggest.update(
        (
            settings.port,
            settings.sip_port,
            settings.voice_api_port,
            settings.gateway_sip_port,
            settings.gateway_api_port,
        )
    )


def _another_port(host: str, port: int, setting: str, kinds: tuple[socket.SocketKind, ...]) -> str:
    """The setting of the next port after `port` that is free on `host` right now (for every kind of socket the
    server takes it for), and neither used by the configuration nor suggested for another setting already: a
    suggestion of port + 1 that is taken too sends the reader round again."""
    for candidate in range(port + 1, min(port + 100, 65535) + 1):
        if candidate in _not_to_suggest:
            continue
        try:
            for kind in kinds:
                _bound(host, candidate, kind).close()
        except OSError:
            continue
        _not_to_suggest.add(candidate)
        return f"DIALBRIDGE_{setting}={candidate}"
    return f"DIALBRIDGE_{setting}=<a free port>"


def _port_problem(host: str, port: int) -> str | None:
    try:
        _bound(host, port).close()
    except OSError as exc:
        from dialbridge.checks import dialbridge_answering

        if exc.errno == errno.EADDRINUSE and dialbridge_answering(host, port):
            shown = f"[{host}]" if ":" in host else host
            return (
                f"a dialbridge server is already answering on http://{shown}:{port} (stop it, or set "
                f"{_another_port(host, port, 'PORT', (socket.SOCK_STREAM,))} to run another beside it)"
            )
        return _bind_problem(host, port, exc)
    return None


def _ports_problems(ports: list[tuple[str, int, tuple[socket.SocketKind, ...], str, str]]) -> list[str]:
    """Why each (host, port, kinds, what, setting) could not be taken, each naming the fix (all of them at once:
    fixing one only to be told of the next is a round trip each)."""
    problems = []
    for host, port, kinds, what, setting in ports:
        try:
            for kind in kinds:
                _bound(host, port, kind).close()
        except OSError as exc:
            problems.append(_bind_problem(host, port, exc, what, setting, kinds))
    return problems


def _voice_port_problems(settings: Settings) -> list[str]:
    """The voice engine's SIP port (UDP and TCP) and its API port."""
    _keep_suggestions_off(settings)
    return _ports_problems(
        [
            (settings.sip_host, settings.sip_port, SIP_KINDS, "SIP port", "SIP_PORT"),
            (settings.voice_api_host, settings.voice_api_port, TCP, "voice API port", "VOICE_API_PORT"),
        ]
    )


def _gateway_port_problems(settings: Settings) -> list[str]:
    """The gateway's SIP port (UDP) and its control API port."""
    _keep_suggestions_off(settings)
    return _ports_problems(
        [
            (settings.sip_host, settings.gateway_sip_port, UDP, "gateway SIP port", "GATEWAY_SIP_PORT"),
            (settings.gateway_api_host, settings.gateway_api_port, TCP, "gateway API port", "GATEWAY_API_PORT"),
        ]
    )


def doctor(settings: Settings) -> int:
    _keep_suggestions_off(settings)  # before the web port's check too
    problems = settings.problems()
    port = _port_problem(settings.host, settings.port)
    if port:
        problems.append(port)
    if settings.backend is Backend.EMBEDDED:
        problems += _voice_port_problems(settings) + _gateway_port_problems(settings)
    from dialbridge.checks import SchemaPlan, schema_plan
    from dialbridge.store.database import shown

    try:
        plan = schema_plan(settings.database_url)  # read-only: doctor checks, serve migrates
    except Exception as exc:
        plan = SchemaPlan("unknown", f"cannot use DIALBRIDGE_DATABASE_URL={shown(settings.database_url)!r}: {exc}")
    if plan.problem:
        problems.append(plan.problem)
    print(f"backend:      {settings.backend.value}")
    print(f"database:     {shown(settings.database_url)}")
    print(f"schema:       {plan.says}")
    print(f"listening on: http://{settings.host}:{settings.port}")
    print(f"webhook base: {settings.base_url}")
    for warning in settings.warnings():
        print(f"warning: {warning}")
    for problem in problems:
        print(f"error: {problem}")
    if not problems:
        print("ok: configuration is usable")
    return 1 if problems else 0


def serve(settings: Settings, workers: int) -> int:
    _keep_suggestions_off(settings)
    problems = settings.problems()
    port = _port_problem(settings.host, settings.port)
    if port:
        problems.append(port)
    embedded = settings.backend is Backend.EMBEDDED
    if embedded:
        problems += _voice_port_problems(settings) + _gateway_port_problems(settings)
    if not problems:
        schema = _migrate_once(settings)
        if schema:
            problems.append(schema)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    example = f"{settings.base_url}/room/{secrets.token_urlsafe(6)}"
    print(f"dialbridge ({settings.backend.value} backend) on http://{settings.host}:{settings.port}")
    print(f"  open a room:      {example}   (any room id works; share the URL)")
    print(f"  answer webhook:   {settings.base_url}/webhooks/answer")
    print(f"  event webhook:    {settings.base_url}/webhooks/events")
    print(f"  health, metrics:  {settings.base_url}/healthz  {settings.base_url}/metrics", flush=True)
    beside = _start_beside(settings) if embedded else []
    from dialbridge.server.supervised import stop_in_order

    def stop_beside() -> None:
        # The gateway first: its calls' BYEs reach the engine, which then posts their final events to the app.
        stop_in_order(beside[::-1])

    shared_metrics = None
    if workers > 1 and settings.metrics_dir is None:
        # Each worker counts its own requests; they meet in this folder so that any worker's /metrics has them all.
        shared_metrics = tempfile.mkdtemp(prefix="dialbridge-metrics-")
        os.environ["DIALBRIDGE_METRICS_DIR"] = shared_metrics
    try:
        _run_uvicorn(settings, workers, before_stop=stop_beside if beside else None)
    finally:
        stop_beside()
        if shared_metrics is not None:
            shutil.rmtree(shared_metrics, ignore_errors=True)
    return 0


def _migrate_once(settings: Settings) -> str | None:
    """Bring the schema up to date here, once, before any worker or the voice engine starts; why it could not.

    Why here: with `--workers N` every worker migrated as it started, one at a time under the migration lock, the
    others waiting with SQLite's 10 s busy timeout; an upgrade longer than that (a large file's table rebuild takes
    ~5 s per 500,000 call events) failed them and stopped `serve` with exit 3. The workers still migrate, and find
    nothing to do (instances elsewhere on one PostgreSQL take turns under its lock, which has no timeout).
    """
    from dialbridge.checks import schema_plan
    from dialbridge.store.database import DatabaseError, create_db_engine, migrate, shown

    try:
        plan = schema_plan(settings.database_url)
        if plan.problem:
            return plan.problem
        if plan.current:
            return None
        if plan.upgrade:
            database = shown(settings.database_url)
            print(
                f"upgrading the schema of {database} (once, before serving; a large database takes a while)", flush=True
            )
        engine = create_db_engine(settings.database_url)
        try:
            migrate(engine)
        finally:
            engine.dispose()
    except DatabaseError as exc:  # says which database and why
        return str(exc)
    except Exception as exc:
        return f"cannot use DIALBRIDGE_DATABASE_URL={shown(settings.database_url)!r}: {exc}"
    return None


def _start_beside(settings: Settings) -> list[SupervisedProcess]:
    """The voice engine and the gateway, each in a process of its own: media timing must not wait behind HTTP work,
    nor the engine's 20 ms clock behind the gateway's WebRTC (an aiortc peer costs ~3 % of a core). They inherit the
    environment, so they read the same settings."""
    from dialbridge.server.supervised import SupervisedProcess

    host = settings.sip_contact_host
    print(f"  phones dial in:   sip:{settings.sip_dial_in_user}@{host}:{settings.sip_port} (UDP or TCP)", flush=True)
    print(f"  browser phone:    {settings.base_url}/phone", flush=True)
    engine = SupervisedProcess([sys.executable, "-m", "dialbridge.cli", "voice"], name="the voice engine")
    engine.start()
    _close_dial_outs_left_open(settings)
    gateway = SupervisedProcess([sys.executable, "-m", "dialbridge.cli", "gateway"], name="the gateway")
    gateway.start()
    return [engine, gateway]


def _close_dial_outs_left_open(settings: Settings) -> None:
    """The gateway about to start holds no call: a dial-out an earlier run left dialling or live (serve killed before
    its gateway's last report arrived, the machine restarted) would ring in its room for good, and a conference one
    would refuse to bring the conference in again. (A gateway that dies under a running serve is SipParticipantWatch's
    to handle, call by call.)"""
    from dialbridge.store.database import create_db_engine
    from dialbridge.store.dial_outs import DialOutStore

    engine = create_db_engine(settings.database_url)
    try:
        closed = DialOutStore(engine).fail_all_open(time.time())
    finally:
        engine.dispose()
    if closed:
        print(f"  closed {closed} dial-out(s) an earlier run left open (its gateway is gone): failed", flush=True)


def _ready_beside(settings: Settings, port_problems: list[str]) -> VoiceCredentials | None:
    """The local application's credentials for a process beside the web server (the engine, the gateway), or None
    after printing each problem in its way, with its fix."""
    from dialbridge.credentials import CredentialsError, VoiceCredentials

    problems = [p for p in settings.problems() if "VONAGE" not in p] + port_problems
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return None
    try:
        return VoiceCredentials.load_or_create(Path(settings.voice_dir))
    except (CredentialsError, OSError) as exc:
        print(
            f"error: cannot use the local application's credentials in {settings.voice_dir} ({exc}); fix the "
            "folder's permissions, or remove it to have new ones made, or point DIALBRIDGE_VOICE_DIR elsewhere",
            file=sys.stderr,
        )
        return None


def gateway(settings: Settings) -> int:
    """Run the WebRTC-SIP gateway alone (`dialbridge serve` starts it beside the web server on the embedded backend)."""
    credentials = _ready_beside(settings, _gateway_port_problems(settings))
    if credentials is None:
        return 1
    import uvloop

    from dialbridge.gateway.service import serve_gateway
    from dialbridge.gateway.shell import GatewaySettings

    gateway_settings = GatewaySettings(
        sip_host=settings.sip_host,
        sip_port=settings.gateway_sip_port,
        contact_host=settings.sip_contact_host,
        rtp_ports=settings.gateway_rtp_port_range,
        signalling_url=settings.signalling_url,
        max_calls=settings.gateway_max_calls,
        dial_in_uri=settings.conference_sip_uri,
        ring_timeout_s=settings.dial_out_ring_s,
        project_id=credentials.application_id,
    )
    secret = settings.signature_secret.get_secret_value() if settings.signature_secret else None
    uvloop.run(
        serve_gateway(
            gateway_settings,
            credentials,
            (settings.gateway_api_host, settings.gateway_api_port),
            callback_url=settings.sip_call_events_url,
            signature_secret=secret,
        )
    )
    return 0


def voice(settings: Settings) -> int:
    """Run the voice engine alone (`dialbridge serve` starts it beside the web server on the embedded backend)."""
    credentials = _ready_beside(settings, _voice_port_problems(settings))
    if credentials is None:
        return 1
    # numpy's BLAS threads would fight the 20 ms clock for the cores (the DTMF bank's matrix product): one thread.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from dialbridge.engine.core import EngineSettings
    from dialbridge.engine.shell import VoiceServer, run_voice_engine
    from dialbridge.sip.connections import TcpConnectionLimits

    engine_settings = EngineSettings(
        contact_host=settings.sip_contact_host,
        contact_port=settings.sip_port,
        answer_url=settings.answer_url,
        event_url=settings.event_url,
        speaking_url=settings.speaking_url,
        dial_in_user=settings.sip_dial_in_user,
        dial_in_number=settings.dial_in_number,
        allowed_networks=tuple(settings.sip_allowed_networks),
        max_calls=settings.max_calls,
        max_unconfirmed_calls=settings.max_unconfirmed_calls,
        max_unconfirmed_calls_per_network=settings.max_unconfirmed_calls_per_network,
        rtp_timeout_s=settings.rtp_timeout_s,
        invites_per_source_per_minute=settings.sip_invites_per_source_per_minute,
        messages_per_source_per_second=settings.sip_messages_per_source_per_second,
        join_tone=settings.join_tones,
        sip_trunk_uri=settings.sip_trunk_uri,
        sip_trunk_username=settings.sip_trunk_username,
        sip_trunk_password=settings.sip_trunk_password.get_secret_value() if settings.sip_trunk_password else None,
        sip_accounts=settings.sip_account_list(),
        sip_digest_algorithms=settings.sip_digest_algorithm_list,
    )
    secret = settings.signature_secret.get_secret_value() if settings.signature_secret else None
    server = VoiceServer(
        settings=engine_settings,
        sip_host=settings.sip_host,
        sip_port=settings.sip_port,
        rtp_ports=settings.rtp_port_range,
        tcp_limits=TcpConnectionLimits(
            per_source=settings.sip_tcp_connections_per_source,
            total=settings.sip_tcp_connections_total,
            idle_s=settings.sip_tcp_idle_timeout_s,
            incomplete_message_s=settings.sip_tcp_incomplete_message_timeout_s,
        ),
        signature_secret=secret,
        dns_server=settings.dns_server_address,
        control=(credentials, settings.voice_api_host, settings.voice_api_port),
        # Named by the SIP port, which no two engines on a machine share: one sharing VOICE_DIR with another (two
        # instances started from one folder) must not take the other's live calls for a crashed engine's.
        journal=Path(settings.voice_dir) / f"live-calls-{settings.sip_port}.jsonl",
    )
    logging.getLogger("dialbridge").info(
        "voice engine: SIP on %s:%d (UDP, TCP), RTP %s, answer webhook %s",
        settings.sip_host,
        settings.sip_port,
        settings.rtp_ports,
        settings.answer_url,
    )
    run_voice_engine(server)
    return 0


def _run_uvicorn(settings: Settings, workers: int, before_stop: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; `before_stop` (stopping the voice engine) runs first, while requests are still
    answered: the engine's last events (every call hung up) must reach the application."""
    import uvicorn

    from dialbridge.engine.rooms.signalling import MAX_MESSAGE_CHARS
    from dialbridge.server.choice import http_protocol
    from dialbridge.server.one_process import STARTUP_FAILURE, run_one_process
    from dialbridge.server.workers import WorkerPool, WorkerStartupFailed

    options: dict[str, Any] = {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "access_log": False,
        "proxy_headers": True,
        "http": http_protocol(),
        # A signalling message is at most 64 KB: a larger frame is refused as it arrives (close 1009), not read
        # whole first (uvicorn's default would read up to 16 MB).
        "ws_max_size": MAX_MESSAGE_CHARS,
    }
    app = "dialbridge.web.app:app_from_environment"
    if workers == 1:
        run_one_process(uvicorn.Config(app, **options), before_stop)
        return
    # Several workers: dialbridge's own pool rather than uvicorn's (server/workers.py says why).
    config = uvicorn.Config(app, **options)
    config.configure_logging()
    listener = _listen(settings.host, settings.port, config.backlog)
    print(f"  {workers} worker processes; each new connection goes to the one holding the fewest", flush=True)
    try:
        WorkerPool(
            config, workers, listener, liveness_timeout_s=settings.worker_timeout_s, before_stop=before_stop
        ).run()
    except WorkerStartupFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(STARTUP_FAILURE) from None


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    try:
        listener = _bound(host, port)
    except OSError as exc:  # taken since serve's check a moment ago
        print(f"error: {_bind_problem(host, port, exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    listener.listen(backlog)
    return listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dialbridge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the web server (settings from DIALBRIDGE_* / .env)")
    run.add_argument("--workers", type=int, default=1, help="worker processes (needs a shared database)")
    commands.add_parser("voice", help="run the embedded voice engine alone (SIP/RTP; serve starts it itself)")
    commands.add_parser("gateway", help="run the WebRTC-SIP gateway alone (serve starts it itself)")
    commands.add_parser("doctor", help="check the configuration and say how to fix what is wrong")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per webhook the voice engine sends
    logging.getLogger("aioice").setLevel(logging.WARNING)  # a line per ICE candidate pair of every browser phone
    settings = _load_settings()
    if args.command == "doctor":
        return doctor(settings)
    if args.command == "voice":
        return voice(settings)
    if args.command == "gateway":
        return gateway(settings)
    if args.workers < 1:
        print(f"error: --workers {args.workers}: run at least one worker (--workers 1, the default)", file=sys.stderr)
        return 2
    if args.workers > 1 and settings.backend is Backend.EMBEDDED:
        # Embedded rooms keep their signalling (who is in the room, relayed offers) in the serving process.
        print(
            "error: the embedded backend serves each room's browsers from one process: run one worker "
            "(drop --workers), or use DIALBRIDGE_BACKEND=vonage to spread webhooks over several",
            file=sys.stderr,
        )
        return 2
    return serve(settings, args.workers)


if __name__ == "__main__":
    raise SystemExit(main())
