"""Test media for real SIP peers: pcap files SIPp plays, and a capture of what crosses loopback.

SIPp's `play_pcap_audio` replays the UDP payloads of a pcap at its timing, from the media port it offered, to the
address the answer's SDP names. The files made here hold RFC 4733 digits and G.711 tones on one RTP stream (one
SSRC, continuous sequence numbers and timestamps), as a phone would send them.

`LoopbackCapture` reads every UDP datagram on `lo` with an AF_PACKET socket (root, inside the tests' network
namespace), so a test can listen to exactly what the engine sent a caller without being part of the call.
"""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
import wave
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dialbridge.media import g711

RATE = 8000
DTMF_EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
DTMF_FREQS = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477),
}  # fmt: skip


@dataclass
class RtpStream:
    """Builds the packets of one RTP stream with continuous numbering, timestamp and send time."""

    payload_type: int = 8
    dtmf_payload_type: int = 101
    ssrc: int = 0x1234ABCD
    seq: int = 1000
    timestamp: int = 160_000
    at: float = 0.0
    ptime_ms: int = 20

    def __post_init__(self) -> None:
        self.packets: list[tuple[float, bytes]] = []

    def _packet(self, pt: int, payload: bytes, *, marker: bool = False, timestamp: int | None = None) -> bytes:
        header = struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | pt, self.seq & 0xFFFF, (timestamp or self.timestamp) & 0xFFFFFFFF,
            self.ssrc,
        )  # fmt: skip
        self.seq += 1
        return header + payload

    def audio(self, samples: np.ndarray, codec: str = "PCMA") -> None:
        step = RATE * self.ptime_ms // 1000
        encoded = g711.encode(codec, samples.astype(np.int16))
        first = True
        for start in range(0, len(encoded) - step + 1, step):
            self.packets.append((self.at, self._packet(self.payload_type, encoded[start : start + step], marker=first)))
            first = False
            self.timestamp += step
            self.at += self.ptime_ms / 1000

    def silence(self, seconds: float, codec: str = "PCMA") -> None:
        self.audio(np.zeros(int(seconds * RATE), np.int16), codec)

    def rfc4733(self, digit: str, duration_ms: int = 100, gap_ms: int = 100) -> None:
        """One key press as phones send it: a marked start, updates every packet time, then three end packets."""
        event = DTMF_EVENTS[digit]
        step = RATE * self.ptime_ms // 1000
        start_ts = self.timestamp
        duration = 0
        first = True
        while duration < duration_ms * 8:
            duration += step
            body = struct.pack("!BBH", event, 10, min(duration, 0xFFFF))
            self.packets.append((self.at, self._packet(self.dtmf_payload_type, body, marker=first, timestamp=start_ts)))
            first = False
            self.at += self.ptime_ms / 1000
        end = struct.pack("!BBH", event, 0x80 | 10, min(duration, 0xFFFF))
        for _ in range(3):
            self.packets.append((self.at, self._packet(self.dtmf_payload_type, end, timestamp=start_ts)))
        self.timestamp = start_ts + duration
        self.silence(gap_ms / 1000)

    def write_pcap(self, path: Path, src_port: int = 6000, dst_port: int = 7000) -> Path:
        write_pcap(path, self.packets, src_port, dst_port)
        return path


def tone(freqs: Iterable[float], seconds: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    signal = sum(np.sin(2 * math.pi * f * t) for f in freqs)
    peak = np.max(np.abs(signal)) or 1.0
    return (signal / peak * level * 32767).astype(np.int16)


def inband_digits(stream: RtpStream, digits: str, on_ms: int = 100, off_ms: int = 100) -> None:
    for digit in digits:
        stream.audio(tone(DTMF_FREQS[digit], on_ms / 1000, level=0.5))
        stream.silence(off_ms / 1000)


def write_pcap(path: Path, packets: list[tuple[float, bytes]], src_port: int, dst_port: int) -> None:
    """Ethernet/IPv4/UDP frames carrying `packets` (SIPp rewrites the addresses and ports when it plays them)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    base = 1_700_000_000.0
    for at, payload in packets:
        udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, b"\x7f\0\0\1", b"\x7f\0\0\1")
        frame = b"\0" * 12 + b"\x08\x00" + ip + udp
        seconds = base + at
        out.append(struct.pack("<IIII", int(seconds), int((seconds % 1) * 1e6), len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


@dataclass(frozen=True)
class Datagram:
    at: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


class LoopbackCapture:
    """Every UDP/IPv4 datagram sent on `lo` while it runs (each once: the outgoing copy)."""

    PACKET_OUTGOING = 4

    def __init__(self) -> None:
        self.datagrams: list[Datagram] = []
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.2)
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LoopbackCapture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()
        self._sock.close()

    def _run(self) -> None:
        while self._running:
            try:
                frame, address = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            if address[2] != self.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            if len(ip) < 28 or ip[9] != 17:
                continue
            header = (ip[0] & 0x0F) * 4
            src_port, dst_port = struct.unpack("!HH", ip[header : header + 4])
            src = (socket.inet_ntoa(ip[12:16]), src_port)
            dst = (socket.inet_ntoa(ip[16:20]), dst_port)
            self.datagrams.append(Datagram(time.monotonic(), src, dst, ip[header + 8 :]))

    def rtp_to(self, port: int, payload_types: tuple[int, ...] = (0, 8)) -> list[Datagram]:
        return [d for d in self.datagrams if d.dst[1] == port and _is_rtp(d.payload, payload_types)]


def _is_rtp(payload: bytes, payload_types: tuple[int, ...]) -> bool:
    return len(payload) > 12 and payload[0] >> 6 == 2 and payload[1] & 0x7F in payload_types


def received_audio(datagrams: list[Datagram]) -> np.ndarray:
    """The audio of RTP packets, decoded, in arrival order (good enough for measuring what a caller heard)."""
    chunks = []
    for d in datagrams:
        pt = d.payload[1] & 0x7F
        chunks.append(g711.decode("PCMA" if pt == 8 else "PCMU", d.payload[12:]))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def tone_energy(samples: np.ndarray, freq: float, rate: int = RATE) -> float:
    """Share of the signal's energy within ±15 Hz of `freq` (0..1), for samples at `rate` Hz."""
    if len(samples) < rate // 4:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    total = spectrum.sum() or 1.0
    return float(spectrum[(freqs > freq - 15) & (freqs < freq + 15)].sum() / total)


def tone_level_db(samples: np.ndarray, freq: float, rate: int = RATE) -> float:
    """The level of what `samples` carry within ±15 Hz of `freq`, in dB relative to a full-scale sine (-inf: none).

    Unlike `tone_energy`, it does not depend on what else is in the signal: a quiet party beside a loud one."""
    if len(samples) < rate // 4:
        return float("-inf")
    window = np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * window)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    band = spectrum[(freqs > freq - 15) & (freqs < freq + 15)].sum()
    mean_square = 2 * band / (len(samples) * float(np.sum(window**2)))  # Parseval, corrected for the window
    return float(10 * np.log10(mean_square / (32767**2 / 2))) if mean_square > 0 else float("-inf")


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file's samples (the first channel) and its sample rate."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * wav.getsampwidth()}-bit samples, expected 16-bit")
        frames = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
        return frames[:: wav.getnchannels()].copy(), wav.getframerate()
