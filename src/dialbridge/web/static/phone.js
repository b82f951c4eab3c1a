// The browser phone: calls the dial-in over WebRTC, as a phone would over SIP. One offer with every ICE candidate
// in it (no trickle) is POSTed to the server, which answers with a final SDP; keypad digits go as single
// characters over a data channel labelled "dtmf", never as in-band tones.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("phone-config").textContent);
  const stateLabel = document.getElementById("call-state");
  const errorLabel = document.getElementById("call-error");
  const callButton = document.getElementById("call");
  const hangupButton = document.getElementById("hangup");
  const remoteAudio = document.getElementById("remote-audio");
  const keyed = document.getElementById("keyed");

  const RTC_CONFIG = { iceServers: [] };  // host candidates only: the server is reached directly, no STUN/TURN
  const GATHERING_TIMEOUT_MS = 5000;      // past this, offer what has been gathered so far
  const CONNECT_TIMEOUT_MS = 20000;
  const BYE_FLUSH_MS = 300;               // how long hanging up waits for the "bye" to leave
  const KEYS = "0123456789*#";
  const DTMF = {
    "1": [697, 1209], "2": [697, 1336], "3": [697, 1477],
    "4": [770, 1209], "5": [770, 1336], "6": [770, 1477],
    "7": [852, 1209], "8": [852, 1336], "9": [852, 1477],
    "*": [941, 1209], "0": [941, 1336], "#": [941, 1477],
  };

  // The tests read the call from here.
  const phone = window.dialbridgePhone = { state: "idle", remoteStream: null, error: null, audioContext: null };
  let call = null;  // { pc, microphone, channel, callId, pendingDigits, timer }

  if (config.dialInNumber) {
    const number = document.getElementById("dial-in-number");
    number.textContent = config.dialInNumber;
    number.classList.remove("unset");
  }
  document.getElementById("sip-address").textContent = config.sipAddress || "";

  function setState(state, error) {
    phone.state = state;
    phone.error = error || null;
    stateLabel.textContent = state;
    stateLabel.dataset.state = state;
    errorLabel.textContent = phone.error || "";
    callButton.disabled = state === "connecting" || state === "in call";
    hangupButton.disabled = !callButton.disabled;
  }

  // One AudioContext, made during a click so the browser lets it play: the keypad's tones use it.
  function audioContext() {
    if (!phone.audioContext) {
      const Context = window.AudioContext || window.webkitAudioContext;
      if (!Context) return null;
      phone.audioContext = new Context();
    }
    if (phone.audioContext.state === "suspended") phone.audioContext.resume().catch(() => {});
    return phone.audioContext;
  }

  // Feedback for the caller only: played to the speakers, never into the call.
  function playKeyTone(key) {
    const context = audioContext();
    if (!context || !DTMF[key]) return;
    const start = context.currentTime;
    const gain = context.createGain();
    gain.gain.setValueAtTime(0, start);
    gain.gain.linearRampToValueAtTime(0.08, start + 0.005);
    gain.gain.setValueAtTime(0.08, start + 0.115);
    gain.gain.linearRampToValueAtTime(0, start + 0.12);
    gain.connect(context.destination);
    for (const frequency of DTMF[key]) {
      const oscillator = context.createOscillator();
      oscillator.frequency.value = frequency;
      oscillator.connect(gain);
      oscillator.start(start);
      oscillator.stop(start + 0.12);
    }
  }

  function microphoneProblem(error) {
    switch (error && error.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "Microphone blocked: allow this page to use the microphone, then call again.";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No microphone found.";
      case "NotReadableError":
        return "The microphone is in use by another application.";
      default:
        return "Microphone unavailable: " + ((error && error.message) || String(error));
    }
  }

  function gatheringComplete(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, GATHERING_TIMEOUT_MS);
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }

  // The token this page was served with: only a page /phone served places or ends calls (it lapses after an hour;
  // the server then says to reload).
  const callHeaders = { "Content-Type": "application/json", Authorization: `Bearer ${config.callToken}` };

  async function postJson(url, body) {
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: callHeaders,
        body: JSON.stringify(body),
      });
    } catch (error) {
      throw new Error("Could not reach the server: " + error.message);
    }
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = (answer.error && answer.error.message) || answer.detail || response.statusText;
      throw new Error(`Server refused the call (HTTP ${response.status})` + (detail ? ": " + detail : ""));
    }
    return answer;
  }

  // Ends this call on this page: mic off, connection closed. Idempotent; only the current call changes the state.
  function finish(current, error) {
    if (!current || current.finished) return;
    current.finished = true;
    clearTimeout(current.timer);
    if (current.microphone) current.microphone.getTracks().forEach((track) => track.stop());
    if (current.pc) current.pc.close();
    if (call === current) {
      call = null;
      setState("ended", error);
    }
  }

  async function startCall() {
    if (call) return;
    audioContext();  // now, inside the click
    const current = { pc: null, microphone: null, channel: null, callId: null, pendingDigits: [], finished: false };
    call = current;
    phone.remoteStream = null;
    keyed.textContent = "";
    setState("connecting");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      call = null;
      setState("ended", "Microphone unavailable: this page needs https (or localhost).");
      return;
    }
    try {
      current.microphone = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: false,
      });
    } catch (error) {
      if (call === current) { call = null; setState("ended", microphoneProblem(error)); }
      return;
    }
    if (call !== current) { current.microphone.getTracks().forEach((track) => track.stop()); return; }

    const pc = current.pc = new RTCPeerConnection(RTC_CONFIG);
    current.microphone.getAudioTracks().forEach((track) => pc.addTrack(track, current.microphone));
    const channel = current.channel = pc.createDataChannel("dtmf", { ordered: true });
    channel.onopen = () => {
      current.pendingDigits.splice(0).forEach((key) => channel.send(key));
    };
    channel.onclose = () => {
      // The server hung up (or the connection is gone): the call is over either way.
      if (call === current && phone.state === "in call") finish(current);
    };
    pc.ontrack = (event) => {
      const stream = event.streams[0] || new MediaStream([event.track]);
      phone.remoteStream = stream;
      remoteAudio.srcObject = stream;
      remoteAudio.play().catch(() => {});  // autoplay may need the click this call started from; it had one
    };
    pc.onconnectionstatechange = () => {
      if (call !== current) return;
      if (pc.connectionState === "connected") {
        clearTimeout(current.timer);
        setState("in call");
      } else if (pc.connectionState === "failed") {
        finish(current, "Connection failed: no network path to the server (ICE).");
      } else if (pc.connectionState === "closed") {
        finish(current);
      }
    };
    current.timer = setTimeout(() => finish(current, "Connection timed out."), CONNECT_TIMEOUT_MS);

    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gatheringComplete(pc);
      if (call !== current) return;
      const answer = await postJson(config.offerUrl, { sdp: pc.localDescription.sdp });
      if (call !== current) {
        // Hung up while the server was answering: tell it, now that there is a call to name.
        if (answer.call_id) postJson(config.hangupUrl, { call_id: answer.call_id }).catch(() => {});
        return;
      }
      current.callId = answer.call_id;
      if (typeof answer.sdp !== "string") throw new Error("The server's answer has no SDP.");
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    } catch (error) {
      finish(current, error.message || String(error));
    }
  }

  async function hangUp() {
    const current = call;
    if (!current) return;
    const channel = current.channel;
    if (channel && channel.readyState === "open") {
      channel.send("bye");
      const deadline = Date.now() + BYE_FLUSH_MS;
      while (channel.bufferedAmount > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    }
    if (current.callId) {
      fetch(config.hangupUrl, {
        method: "POST",
        headers: callHeaders,
        body: JSON.stringify({ call_id: current.callId }),
        keepalive: true,  // still sent when hanging up because the page is going away
      }).catch(() => {});
    }
    finish(current);
  }

  function press(key) {
    const button = document.querySelector(`#keypad [data-key="${CSS.escape(key)}"]`);
    if (button) {
      button.classList.add("pressed");
      setTimeout(() => button.classList.remove("pressed"), 120);
    }
    playKeyTone(key);
    if (!call || phone.state === "ended") return;
    keyed.textContent += key;
    if (call.channel && call.channel.readyState === "open") call.channel.send(key);
    else call.pendingDigits.push(key);
  }

  callButton.addEventListener("click", () => { startCall(); });
  hangupButton.addEventListener("click", () => { hangUp(); });
  document.querySelectorAll("#keypad [data-key]").forEach((button) => {
    button.addEventListener("click", () => press(button.dataset.key));
  });
  document.addEventListener("keydown", (event) => {
    if (event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target && /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName)) return;
    if (KEYS.includes(event.key) && event.key.length === 1) {
      event.preventDefault();
      press(event.key);
    }
  });
  window.addEventListener("pagehide", () => { hangUp(); });
  setState("idle");
})();
