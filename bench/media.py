"""Microbenchmarks of the media layer: prints µs per tick (or per frame / per prompt).

Run: OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/media.py
The engine runs on one core: the DTMF bank's matrix product goes through OpenBLAS, whose worker
threads only contend with the tick loop (and with each other on a busy machine), so measure (and run
the engine) with OPENBLAS_NUM_THREADS=1. Figures are the median of several repeats, on whatever else
the machine is doing at the time.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from dialbridge.media import g711
from dialbridge.media.dtmf import InbandDtmfBank, detect_rows, dtmf_tone
from dialbridge.media.mixer import ConferenceMixer
from dialbridge.media.tones import join_tone

FRAME = 160
RNG = np.random.default_rng(0)


def per_call_us(fn: Callable[[], object], *, calls: int = 200, repeats: int = 7) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def speech_like(members: int) -> np.ndarray:
    return RNG.normal(0, 2000, (members, FRAME)).clip(-32768, 32767).astype(np.int16)


def populated_mixer(members: int, conference_size: int) -> ConferenceMixer:
    mixer = ConferenceMixer(capacity=64)
    for m in range(members):
        mixer.join(f"m{m}", f"c{m // conference_size}")
    return mixer


def bench_mix(members: int, conference_size: int) -> None:
    mixer = populated_mixer(members, conference_size)
    frames = speech_like(members)
    rows = np.array([mixer.row(f"m{m}") for m in range(members)])

    def tick() -> None:
        mixer.inputs[rows] = frames
        mixer.mix()

    tone = join_tone()
    ticks = 0

    def tick_with_tones() -> None:
        # A join tone (200 ms = 10 ticks) started on every 10th conference every 10 ticks: 10 % playing.
        nonlocal ticks
        if ticks % 10 == 0:
            for c in range(0, members // conference_size, 10):
                mixer.play_to_conference(f"c{c}", tone)
        ticks += 1
        tick()

    us = per_call_us(tick)
    print(f"mix, {members} members in conferences of {conference_size}: {us:8.1f} µs/tick ({us / members:.2f}/member)")
    if conference_size == 5 and members == 400:
        print(f"  ... with 10 % of the conferences playing a tone: {per_call_us(tick_with_tones):8.1f} µs/tick")


def bench_full_tick(members: int) -> None:
    mixer = populated_mixer(members, 5)
    rows = np.array([mixer.row(f"m{m}") for m in range(members)])
    alaw = np.arange(members) % 2 == 0
    received = g711.encode_rows(speech_like(members), alaw)

    def tick() -> None:
        mixer.inputs[rows] = g711.decode_rows(received, alaw)
        result = mixer.mix()
        g711.encode_rows(result.outputs[rows], alaw)

    us = per_call_us(tick)
    print(f"decode_rows + mix + encode_rows, {members} members: {us:8.1f} µs/tick ({us / members:.2f}/member)")


def bench_dtmf(rows: int) -> None:
    bank = InbandDtmfBank(capacity=rows)
    for r in range(rows):
        bank.add(f"s{r}")
    frames = speech_like(rows)
    frames[::7] = dtmf_tone("5", 20)  # some rows carry a tone
    rows_ix = np.array([bank.row(f"s{r}") for r in range(rows)])

    def tick() -> None:
        bank.inputs[rows_ix] = frames
        bank.detect()

    us = per_call_us(tick)
    print(f"InbandDtmfBank.detect, {rows} rows: {us:8.1f} µs/tick ({us / rows:.2f}/row)")
    print(f"detect_rows only, {rows} rows: {per_call_us(lambda: detect_rows(frames)):8.1f} µs")
    one = frames[:1]
    print(f"detect_rows, 1 row: {per_call_us(lambda: detect_rows(one), calls=2000):8.1f} µs")


def bench_g711() -> None:
    frame = speech_like(1)[0]
    for codec in ("PCMU", "PCMA"):
        payload = g711.encode(codec, frame)
        enc = per_call_us(functools.partial(g711.encode, codec, frame), calls=5000)
        dec = per_call_us(functools.partial(g711.decode, codec, payload), calls=5000)
        print(f"g711 {codec} one frame: encode {enc:6.2f} µs, decode {dec:6.2f} µs")
    members = 400
    alaw = np.arange(members) % 2 == 0
    pcm = speech_like(members)
    enc_rows = g711.encode_rows(pcm, alaw)
    print(f"g711 encode_rows {members}x160: {per_call_us(lambda: g711.encode_rows(pcm, alaw)):8.1f} µs")
    print(f"g711 decode_rows {members}x160: {per_call_us(lambda: g711.decode_rows(enc_rows, alaw)):8.1f} µs")


def bench_tts() -> None:
    from dialbridge.media.tts import SpeechSynthesizer

    text = "Welcome. Please enter the PIN of your meeting, followed by the hash key."
    synthesizer = SpeechSynthesizer()
    start = time.perf_counter()
    synthesizer.synthesize("Hello.")
    init_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    speech = synthesizer.synthesize(text)
    first_ms = (time.perf_counter() - start) * 1e3
    cached_us = per_call_us(lambda: synthesizer.synthesize(text), calls=1000)
    print(f"tts: first call in the process (espeak-ng load + init + 'Hello.'): {init_ms:.1f} ms")
    seconds = len(speech) / 8000
    print(f"tts: welcome prompt ({seconds:.2f} s of audio) first {first_ms:.1f} ms, cached {cached_us:.1f} µs")


def main() -> None:
    print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset: OpenBLAS picks)')}")
    bench_g711()
    bench_mix(400, 5)
    bench_mix(400, 20)
    bench_mix(2000, 5)
    bench_mix(400, 400)
    bench_full_tick(400)
    bench_dtmf(400)
    bench_tts()


if __name__ == "__main__":
    main()
