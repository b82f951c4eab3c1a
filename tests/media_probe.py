"""What a room page hears, measured in the page with WebAudio, over one second of everything its subscribers play
(their MediaStreams, mixed)."""

from __future__ import annotations

# Defines `bins` (dB per frequency bin), `floor` (the median bin: the noise floor) and `binHz` in the page.
_LISTEN = """
  const context = new AudioContext();
  await context.resume();
  const analyser = context.createAnalyser();
  analyser.fftSize = 8192;
  analyser.smoothingTimeConstant = 0;
  for (const video of document.querySelectorAll('.OT_subscriber video')) {
    if (video.srcObject && video.srcObject.getAudioTracks().length) {
      context.createMediaStreamSource(video.srcObject).connect(analyser);
    }
  }
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const bins = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(bins);
  const sorted = Array.from(bins).sort((a, b) => a - b);
  const floor = sorted[sorted.length >> 1];
  const binHz = context.sampleRate / analyser.fftSize;
  await context.close();
"""

# The strongest frequency: its frequency, its level in dB, the noise floor's, and the analyser's bin width.
SUBSCRIBER_PEAK = (
    "async () => {"
    + _LISTEN
    + """
  let peak = 1;
  for (let i = 1; i < bins.length; i++) if (bins[i] > bins[peak]) peak = i;
  return { hz: peak * binHz, db: bins[peak], medianDb: floor, binHz };
}"""
)

# How far above the noise floor (dB) each of `freqs` stands: {"440": 52.1, ...}; a tone counts at its loudest bin
# within two bins of its frequency.
SUBSCRIBER_LEVELS = (
    "async (freqs) => {"
    + _LISTEN
    + """
  const levels = {};
  for (const hz of freqs) {
    const centre = Math.round(hz / binHz);
    let loudest = -Infinity;
    for (let i = centre - 2; i <= centre + 2; i++) loudest = Math.max(loudest, bins[i]);
    levels[String(hz)] = loudest - floor;
  }
  return levels;
}"""
)
