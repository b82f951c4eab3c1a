"""baresip, a real softphone, dials `dialbridge serve` (embedded backend), keys the PIN and joins a SIPp caller.

baresip 1.0 runs headless: a sine (`ausine`) is its microphone, the `sndfile` filter writes what it hears to a WAV
file, and `ctrl_tcp` takes netstring JSON commands (`dial`, `sndcode`, `hangup`, `quit`; the call commands exist only
while a call is up) and pushes its call events on the same connection. It binds SIP and RTP to 127.0.0.1 only
(`net_interface 127.0.0.1`), so it runs in the tests' loopback-only namespace. Two things it does that SIPp does
not: a re-INVITE right after the ACK, and RFC 4733 digits from its own telephone-event encoder.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.engine import sipp
from tests.engine.rtp_media import LoopbackCapture, RtpStream, read_wav, received_audio, tone, tone_energy
from tests.engine.stack import VoiceStack, free_port, voice_stack

BARESIP = shutil.which("baresip")

pytestmark = [
    pytest.mark.skipif(BARESIP is None, reason="baresip is not installed: make test installs the baresip package"),
    pytest.mark.skipif(sipp.SIPP is None, reason="SIPp is not installed: make test installs the sip-tester package"),
    pytest.mark.timeout(90),
]

CONFIG = """poll_method epoll
sip_listen 127.0.0.1:{sip_port}
net_interface 127.0.0.1
call_local_timeout 120
call_max_calls 4
audio_source ausine,{freq}
audio_player aufile,{folder}/unused.wav
audio_alert aufile,{folder}/unused.wav
ausrc_srate 48000
auplay_srate 48000
ausrc_channels 2
auplay_channels 1
audio_level no
ausrc_format s16
auplay_format s16
auenc_format s16
audec_format s16
audio_buffer 20-160
rtp_tos 0
rtp_ports {rtp_low}-{rtp_high}
rtcp_mux no
jitter_buffer_delay 5-10
rtp_stats no
module_path /usr/lib/baresip/modules
module g711.so
module sndfile.so
module aufile.so
module ausine.so
module_tmp uuid.so
module_tmp account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:{ctrl_port}
snd_path {folder}/snd
"""


class Baresip:
    """One baresip process and its ctrl_tcp connection (commands answered in order; events collected)."""

    def __init__(
        self, folder: Path, *, freq: float, rtp_low: int, auto_answer: bool = False, account: str | None = None
    ) -> None:
        """`account`: baresip's accounts line (default: an unregistered `sip:baresip@127.0.0.1`)."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "snd").mkdir(exist_ok=True)
        self.sip_port, self.ctrl_port = free_port(), free_port()
        self.rtp_ports = (rtp_low, rtp_low + 19)
        (folder / "config").write_text(
            CONFIG.format(
                sip_port=self.sip_port, ctrl_port=self.ctrl_port, freq=int(freq), folder=folder,
                rtp_low=rtp_low, rtp_high=rtp_low + 19,
            )
        )  # fmt: skip
        answer = ";answermode=auto" if auto_answer else ""  # a callee that picks up at once
        (folder / "accounts").write_text((account or f"<sip:baresip@127.0.0.1>;regint=0{answer}") + "\n")
        self.log = folder / "baresip.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [BARESIP or "baresip", "-f", str(folder), "-v", "-s"], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self._responses: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._sock = self._connect()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"baresip exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                return socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1)
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"baresip's ctrl_tcp did not listen:\n{self.log.read_text()}") from None
                time.sleep(0.1)

    def _read(self) -> None:
        buffer = b""
        self._sock.settimeout(0.5)
        while True:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b":" in buffer:  # netstrings: <length>:<json>,
                length_text, _, rest = buffer.partition(b":")
                length = int(length_text)
                if len(rest) < length + 1:
                    break
                message = json.loads(rest[:length])
                buffer = rest[length + 1 :]
                with self._cond:
                    (self.events if message.get("event") else self._responses).append(message)
                    self._cond.notify_all()

    def command(self, command: str, params: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        body: dict[str, Any] = {"command": command, "token": command}
        if params is not None:
            body["params"] = params
        data = json.dumps(body).encode()
        with self._cond:
            self._sock.sendall(b"%d:%s," % (len(data), data))
            if not self._cond.wait_for(lambda: bool(self._responses), timeout):
                raise AssertionError(f"baresip did not answer {command!r}:\n{self.log.read_text()[-3000:]}")
            response = self._responses.pop(0)
        assert response.get("ok"), f"baresip refused {command!r}: {response}"
        return response

    def wait_event(self, kind: str, timeout: float) -> dict[str, Any]:
        with self._cond:
            found = self._cond.wait_for(lambda: next((e for e in self.events if e.get("type") == kind), None), timeout)
        if not found:
            raise AssertionError(f"baresip reported no {kind} within {timeout} s: {self.events}")
        return found

    def heard(self) -> tuple[np.ndarray, int]:
        """What baresip decoded from the call's RTP (sndfile's `-dec.wav`) and its sample rate."""
        files = sorted((self.folder / "snd").glob("*-dec.wav"))
        assert files, f"sndfile wrote no recording: {list((self.folder / 'snd').iterdir())}"
        return read_wav(files[-1])

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.command("quit", timeout=2)
                self.process.wait(timeout=3)
            except (AssertionError, OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._sock.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[VoiceStack]:
    with voice_stack(tmp_path) as running:
        yield running


def test_baresip_keys_the_pin_and_hears_a_sipp_caller_in_the_conference(stack: VoiceStack, tmp_path: Path) -> None:
    pin = stack.new_room("baresip-room")
    phone_freq, sipp_freq = 650.0, 2200.0
    sipp_port = 17000
    phone = Baresip(tmp_path / "baresip", freq=phone_freq, rtp_low=17100)
    try:
        with LoopbackCapture() as capture:
            # SIPp: the PIN (RFC 4733) 1 s after the answer, the join prompt, then its tone until after baresip left.
            media = RtpStream(ssrc=0x5151)
            for digit in pin + "#":
                media.rfc4733(digit)
            media.silence(4.5)
            media.audio(tone([sipp_freq], 16.0))
            xml = sipp.scenario(
                sipp.invite(), sipp.ANSWERED, sipp.ACK, sipp.pause(1000),
                sipp.play(media.write_pcap(tmp_path / "sipp.pcap")), sipp.pause(23000), sipp.BYE,
            )  # fmt: skip
            caller = sipp.start(
                tmp_path / "sipp", xml, target=stack.sip_target, sip_port=free_port(), media_port=sipp_port
            )
            phone.command("dial", f"sip:dialin@{stack.sip_target}")
            phone.wait_event("CALL_ESTABLISHED", timeout=10)
            time.sleep(0.2)
            # baresip re-INVITEs right after the ACK when an answer leaves it a choice of codecs; ours names one, so
            # ask for the re-INVITE ourselves: the same offer again, in the dialog, while the welcome prompt plays.
            phone.command("reinvite")
            time.sleep(1.3)  # keys barge in on the prompt, as in the SIPp tests
            for digit in pin + "#":
                phone.command("sndcode", digit)
                time.sleep(0.3)
            time.sleep(10.0)  # the join prompt, then both callers in the conference
            phone_window = (time.monotonic() - 5.0, time.monotonic())
            phone.command("hangup")
            phone.wait_event("CALL_CLOSED", timeout=5)
            assert caller.wait(40) == 0, f"the SIPp caller failed:\n{caller.errors()}"
        closed = [e.get("param") for e in phone.events if e.get("type") == "CALL_CLOSED"]
        assert closed == ["Connection reset by user"], f"baresip's call ended otherwise than by its hangup: {closed}"
        # The re-INVITE was answered 200 with SDP, and the call went on (the audio below is after it).
        engine_sip = stack.sip_port
        reinvites = [
            d.payload for d in capture.datagrams
            if d.src[1] == phone.sip_port and d.dst[1] == engine_sip and d.payload.startswith(b"INVITE ")
        ]  # fmt: skip
        assert len(reinvites) == 2, f"baresip sent {len(reinvites)} INVITEs, expected the call's and a re-INVITE"
        ok_to_invites = [
            d.payload for d in capture.datagrams
            if d.src[1] == engine_sip and d.dst[1] == phone.sip_port and d.payload.startswith(b"SIP/2.0 200")
            and b" INVITE\r\n" in d.payload and b"m=audio" in d.payload
        ]  # fmt: skip
        cseqs = {line for p in ok_to_invites for line in p.split(b"\r\n") if line.lower().startswith(b"cseq:")}
        assert len(cseqs) == 2, f"the engine's 200s with SDP to baresip's INVITEs: {sorted(cseqs)}"
        heard, rate = phone.heard()
        tail = heard[-4 * rate :]  # the last seconds before baresip hung up: both in the conference
        assert len(tail) == 4 * rate, f"baresip decoded only {len(heard) / rate:.1f} s of audio"
        assert tone_energy(tail, sipp_freq, rate) > 0.3, "baresip does not hear the SIPp caller"
        assert tone_energy(tail, phone_freq, rate) < 0.02, "baresip hears itself"
        to_sipp = [d for d in capture.rtp_to(sipp_port) if phone_window[0] <= d.at <= phone_window[1]]
        sipp_heard = received_audio(to_sipp)
        assert len(sipp_heard) > 8000 * 3, f"SIPp received {len(sipp_heard)} samples while both were in"
        assert tone_energy(sipp_heard, phone_freq) > 0.3, "the SIPp caller does not hear baresip"
        assert tone_energy(sipp_heard, sipp_freq) < 0.02, "the SIPp caller hears itself"
        # baresip's digits went as RFC 4733 events (payload type 101 in its offer), not in-band or INFO.
        events_sent = [
            d for d in capture.datagrams
            if d.src[1] in range(*phone.rtp_ports) and len(d.payload) > 12 and d.payload[1] & 0x7F == 101
        ]  # fmt: skip
        keyed = {d.payload[12] for d in events_sent}
        assert keyed >= {int(c) for c in pin} | {11}, f"RFC 4733 events from baresip: {sorted(keyed)}"
    finally:
        phone.close()
