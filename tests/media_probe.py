"""What a room page hears, measured in the page with WebAudio: the strongest frequency of its subscribers' audio."""

from __future__ import annotations

# The peak of everything the page's subscribers play (their MediaStreams, mixed), over one second: its frequency,
# its level in dB, the median bin's level (the noise floor), and the analyser's bin width.
SUBSCRIBER_PEAK = """async () => {
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
  let peak = 1;
  for (let i = 1; i < bins.length; i++) if (bins[i] > bins[peak]) peak = i;
  const sorted = Array.from(bins).sort((a, b) => a - b);
  await context.close();
  return { hz: peak * context.sampleRate / analyser.fftSize, db: bins[peak], medianDb: sorted[sorted.length >> 1],
           binHz: context.sampleRate / analyser.fftSize };
}"""
