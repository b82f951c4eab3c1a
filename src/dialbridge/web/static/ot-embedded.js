// dialbridge's embedded video SDK: the subset of Vonage's `OT` browser API the room page uses, implemented over
// dialbridge's WebSocket signalling (protocol: engine/rooms/signalling.py) with peer-to-peer WebRTC, one
// RTCPeerConnection per (published stream, subscriber). The subscriber makes the offer (receive-only); the
// publisher answers with its camera and microphone tracks. No build step: plain script, defines window.OT.
(function () {
  "use strict";

  const DEFAULT_SIGNALLING_PATH = "/rt/signalling";
  const KEEPALIVE_MS = 15000;  // the server drops a socket silent for 45 s
  const RTC_CONFIG = { iceServers: [] };  // host candidates only: no public STUN/TURN is assumed reachable
  // A subscriber not connected by then is reported as failed: with no candidate pair at all (UDP blocked, no
  // address in common) ICE never reaches "failed", and the page showed a black tile under "Connected." for good.
  const SUBSCRIBE_TIMEOUT_MS = 20000;

  function otError(name, message) {
    const error = new Error(message);
    error.name = name;
    error.code = name;
    return error;
  }

  function resolveElement(target) {
    if (target === undefined || target === null) return document.body;
    if (typeof target === "string") {
      const found = document.getElementById(target);
      if (!found) throw otError("OT_INVALID_PARAMETER", "no element with id " + JSON.stringify(target));
      return found;
    }
    return target;
  }

  // Place `element` relative to `target` following OT's insertMode (default "replace").
  function insertElement(target, element, insertMode) {
    const host = resolveElement(target);
    switch (insertMode || "replace") {
      case "append": host.appendChild(element); break;
      case "before": host.parentNode.insertBefore(element, host); break;
      case "after": host.parentNode.insertBefore(element, host.nextSibling); break;
      default:
        if (host === document.body) host.appendChild(element);
        else { element.id = element.id || host.id; host.replaceWith(element); }
    }
  }

  function makeVideo(muted) {
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    video.setAttribute("autoplay", "");
    video.setAttribute("playsinline", "");
    if (muted) { video.muted = true; video.setAttribute("muted", ""); }
    video.style.width = "100%";
    video.style.height = "100%";
    return video;
  }

  function sizeContainer(container, props) {
    const size = (value) => (typeof value === "number" ? value + "px" : value);
    if (props && props.width !== undefined) container.style.width = size(props.width);
    if (props && props.height !== undefined) container.style.height = size(props.height);
  }

  // Browsers may refuse to autoplay sound before a user gesture; keep the picture going muted, then unmute on the
  // first click or key press on the page.
  function playWithSound(video) {
    const attempt = video.play();
    if (!attempt || !attempt.catch) return;
    attempt.catch((error) => {
      if (error.name !== "NotAllowedError") return;
      video.muted = true;
      video.play().catch(() => {});
      const unmute = () => { video.muted = false; video.play().catch(() => {}); };
      document.addEventListener("click", unmute, { once: true });
      document.addEventListener("keydown", unmute, { once: true });
    });
  }

  // OT's audioLevelUpdated: the level (0–1, linear amplitude) of a stream's audio, measured with WebAudio ten times a
  // second while anyone listens for it. One AudioContext serves the page; browsers start it suspended until a user
  // gesture, so it is resumed on the first click or key press too.
  const AUDIO_LEVEL_INTERVAL_MS = 100;
  let sharedAudioContext = null;

  function audioContext() {
    if (!sharedAudioContext && typeof AudioContext === "function") {
      sharedAudioContext = new AudioContext();
      const resume = () => sharedAudioContext.resume().catch(() => {});
      resume();
      document.addEventListener("click", resume, { once: true });
      document.addEventListener("keydown", resume, { once: true });
    }
    return sharedAudioContext;
  }

  // Measures `emitter`'s audio (`mediaStream()` gives its current MediaStream) and dispatches audioLevelUpdated while
  // it has handlers for it. Returns a function that stops the meter.
  function meterAudioLevel(emitter, mediaStream) {
    let source = null;
    let track = null;
    let analyser = null;
    let samples = null;
    const timer = setInterval(() => {
      const handlers = emitter._handlers.get("audioLevelUpdated");
      if (!handlers || handlers.length === 0) return;
      const stream = mediaStream();
      const audio = stream && stream.getAudioTracks()[0];
      if (!audio) return;
      const context = audioContext();
      if (!context) return;
      if (audio !== track) {  // first measurement, or the track was replaced
        if (source) source.disconnect();
        track = audio;
        analyser = context.createAnalyser();
        analyser.fftSize = 1024;
        samples = new Float32Array(analyser.fftSize);
        source = context.createMediaStreamSource(new MediaStream([audio]));
        source.connect(analyser);
      }
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const sample of samples) sum += sample * sample;
      // A disabled track (publishAudio(false)) is silence at the source: report 0, as OT does.
      const level = audio.enabled ? Math.min(1, Math.sqrt(sum / samples.length)) : 0;
      emitter._dispatch("audioLevelUpdated", { audioLevel: level });
    }, AUDIO_LEVEL_INTERVAL_MS);
    return () => {
      clearInterval(timer);
      if (source) source.disconnect();
    };
  }

  // OT's videoDisabled / videoEnabled on a subscriber: a stopped camera sends no frames at all (see Publisher
  // _sendVideo), and Chromium keeps such a remote track unmuted, so the frames decoded are what tells.
  const VIDEO_STALL_MS = 1500;

  function watchVideoFrames(subscriber) {
    let frames = 0;
    let lastFrameAt = Date.now();
    let shown = null;  // unknown until the first frame
    const timer = setInterval(() => {
      const now = Date.now();
      const decoded = subscriber.videoElement.getVideoPlaybackQuality().totalVideoFrames;
      if (decoded !== frames) { frames = decoded; lastFrameAt = now; }
      const showing = frames > 0 && now - lastFrameAt < VIDEO_STALL_MS;
      if (frames === 0 || showing === shown) return;
      shown = showing;
      subscriber._dispatch(showing ? "videoEnabled" : "videoDisabled", { reason: "publishVideo" });
    }, 250);
    return () => clearInterval(timer);
  }

  // The OT error name for a getUserMedia failure, so the page can say which device and why.
  function mediaErrorName(cause) {
    switch (cause && cause.name) {
      case "NotFoundError": case "OverconstrainedError": return "OT_NO_DEVICES_FOUND";
      case "NotReadableError": case "AbortError": return "OT_HARDWARE_UNAVAILABLE";
      case "NotAllowedError": case "SecurityError": return "OT_USER_MEDIA_ACCESS_DENIED";
      default: return "OT_USER_MEDIA_ACCESS_DENIED";
    }
  }

  // --- events: on/off/once with OT's handler shapes (type string, space-separated types, or {type: handler}) ---
  class EventEmitter {
    constructor() { this._handlers = new Map(); }

    on(type, handler, context) {
      if (type && typeof type === "object") {
        for (const [name, fn] of Object.entries(type)) this.on(name, fn, handler);
        return this;
      }
      for (const name of String(type).split(/\s+/).filter(Boolean)) {
        if (!this._handlers.has(name)) this._handlers.set(name, []);
        this._handlers.get(name).push({ handler, context, once: false });
      }
      return this;
    }

    once(type, handler, context) {
      this.on(type, handler, context);
      for (const name of String(type).split(/\s+/).filter(Boolean)) {
        const list = this._handlers.get(name);
        list[list.length - 1].once = true;
      }
      return this;
    }

    off(type, handler, context) {
      if (type === undefined) { this._handlers.clear(); return this; }
      if (type && typeof type === "object") {
        for (const [name, fn] of Object.entries(type)) this.off(name, fn, handler);
        return this;
      }
      for (const name of String(type).split(/\s+/).filter(Boolean)) {
        const list = this._handlers.get(name);
        if (!list) continue;
        this._handlers.set(name, handler === undefined ? [] :
          list.filter((h) => h.handler !== handler || (context !== undefined && h.context !== context)));
      }
      return this;
    }

    // Returns the event so callers can honour preventDefault() before their default action.
    _dispatch(type, fields) {
      let prevented = false;
      const event = Object.assign({
        type,
        target: this,
        cancelable: true,
        preventDefault() { prevented = true; },
        isDefaultPrevented() { return prevented; },
      }, fields);
      for (const entry of [...(this._handlers.get(type) || [])]) {
        if (entry.once) this.off(type, entry.handler, entry.context);
        try { entry.handler.call(entry.context || this, event); }
        catch (error) { console.error("OT event handler for " + type + " failed", error); }
      }
      return event;
    }
  }

  function makeConnection(json) {
    return { connectionId: json.connectionId, data: json.data || "", creationTime: json.creationTime };
  }

  // --- Publisher: the local camera and microphone ---
  class Publisher extends EventEmitter {
    constructor(target, props, completion) {
      super();
      props = props || {};
      this.id = "publisher-" + Math.random().toString(36).slice(2);
      this.stream = null;
      this.session = null;
      this.accessAllowed = false;
      this._props = props;
      this._peers = new Map();  // subscriber connectionId -> RTCPeerConnection
      this.element = document.createElement("div");
      this.element.className = "OT_publisher";
      sizeContainer(this.element, props);
      this.videoElement = makeVideo(true);  // your own voice must never play back to you
      this.element.appendChild(this.videoElement);
      insertElement(target, this.element, props.insertMode);

      const wantAudio = props.publishAudio !== false && props.audioSource !== null && props.audioSource !== false;
      const wantVideo = props.publishVideo !== false && props.videoSource !== null && props.videoSource !== false;
      // Browsers offer cameras only to secure pages: https, or http on localhost.
      const capture = navigator.mediaDevices && navigator.mediaDevices.getUserMedia
        ? navigator.mediaDevices.getUserMedia({ audio: wantAudio, video: wantVideo })
        : Promise.reject(new Error("this browser offers cameras only to https pages (or http://localhost)"));
      this.ready = capture.then(
        (media) => {
          this.mediaStream = media;
          this.accessAllowed = true;
          this.videoElement.srcObject = media;
          this.videoElement.play().catch(() => {});
          this._dispatch("accessAllowed", {});
          if (completion) completion(undefined);
          return media;
        },
        (cause) => {
          const error = otError(mediaErrorName(cause), "camera or microphone: " + cause.message);
          this._dispatch("accessDenied", { message: error.message });
          if (completion) completion(error);
          throw error;
        },
      );
      this.ready.catch(() => {});  // reported through the completion handler
      this._stopMeter = meterAudioLevel(this, () => this.mediaStream);
    }

    publishAudio(enabled) { this._setEnabled("audio", enabled); return this; }
    publishVideo(enabled) { this._setEnabled("video", enabled); return this; }

    _setEnabled(kind, enabled) {
      if (!this.mediaStream) return;
      for (const track of this.mediaStream.getTracks()) if (track.kind === kind) track.enabled = !!enabled;
      if (kind === "video") for (const peer of this._peers.values()) this._sendVideo(peer);
    }

    // A stopped camera sends nothing rather than black frames: the subscribers' track then goes muted, which they
    // report as OT's videoDisabled (and videoEnabled when it comes back), so their pages can show a name, not black.
    _sendVideo(peer) {
      const track = this.mediaStream && this.mediaStream.getVideoTracks()[0];
      if (!track) return;
      for (const transceiver of peer.getTransceivers()) {
        if (transceiver.receiver.track.kind !== "video" || transceiver.stopped) continue;
        transceiver.sender.replaceTrack(track.enabled ? track : null).catch(() => {});
      }
    }

    // A subscriber's offer for our stream arrived: answer it with our tracks.
    async _answer(session, from, offer) {
      this._closePeer(from);
      const peer = new RTCPeerConnection(RTC_CONFIG);
      this._peers.set(from, peer);
      session._watchIce(peer, from, this.stream.streamId);
      await peer.setRemoteDescription(offer);
      const media = await this.ready;
      // The offer's receive-only transceivers are reused by addTrack, matched by kind.
      for (const track of media.getTracks()) peer.addTrack(track, media);
      this._sendVideo(peer);
      await peer.setLocalDescription(await peer.createAnswer());
      session._send({ type: "signal", to: from, streamId: this.stream.streamId, kind: "answer",
                      data: { type: "answer", sdp: peer.localDescription.sdp } });
    }

    _closePeer(connectionId) {
      const peer = this._peers.get(connectionId);
      if (peer) { peer.close(); this._peers.delete(connectionId); }
    }

    _unpublished(reason) {
      for (const id of [...this._peers.keys()]) this._closePeer(id);
      const stream = this.stream;
      this.stream = null;
      this.session = null;
      if (stream) this._dispatch("streamDestroyed", { stream, reason });
    }

    destroy() {
      if (this.session) this.session.unpublish(this);
      if (this.mediaStream) for (const track of this.mediaStream.getTracks()) track.stop();
      this._stopMeter();
      this.element.remove();
      this._dispatch("destroyed", {});
      return this;
    }
  }

  // --- Subscriber: one remote stream shown in a video element ---
  class Subscriber extends EventEmitter {
    constructor(session, stream, target, props) {
      super();
      props = props || {};
      this.id = "subscriber-" + stream.streamId;
      this.stream = stream;
      this.session = session;
      this.element = document.createElement("div");
      this.element.className = "OT_subscriber";
      sizeContainer(this.element, props);
      this.videoElement = makeVideo(false);
      this.element.appendChild(this.videoElement);
      insertElement(target, this.element, props.insertMode);
      this.peer = new RTCPeerConnection(RTC_CONFIG);
      // The publisher's candidates may overtake its answer; hold them until the answer is applied.
      this.answered = new Promise((resolve) => { this._answeredResolve = resolve; });
      this._remote = new MediaStream();
      this.videoElement.srcObject = this._remote;
      this.peer.ontrack = (event) => {
        this._remote.addTrack(event.track);
        playWithSound(this.videoElement);
      };
      this._stopVideoWatch = watchVideoFrames(this);
      this._stopMeter = meterAudioLevel(this, () => this._remote);
    }

    async _offer() {
      if (this.stream.hasAudio) this.peer.addTransceiver("audio", { direction: "recvonly" });
      if (this.stream.hasVideo) this.peer.addTransceiver("video", { direction: "recvonly" });
      await this.peer.setLocalDescription(await this.peer.createOffer());
      this.session._send({ type: "signal", to: this.stream.connection.connectionId, streamId: this.stream.streamId,
                           kind: "offer", data: { type: "offer", sdp: this.peer.localDescription.sdp } });
    }

    subscribeToAudio(enabled) { this._setEnabled("audio", enabled); return this; }
    subscribeToVideo(enabled) { this._setEnabled("video", enabled); return this; }

    _setEnabled(kind, enabled) {
      for (const track of this._remote.getTracks()) if (track.kind === kind) track.enabled = !!enabled;
    }

    _destroy(reason) {
      if (!this.peer) return;
      this.peer.close();
      this.peer = null;
      this._stopMeter();
      this._stopVideoWatch();
      this.element.remove();
      this._dispatch("destroyed", { reason });
    }
  }

  // --- Session: the signalling socket and everything learnt through it ---
  class Session extends EventEmitter {
    constructor(apiKey, sessionId, options) {
      super();
      this.apiKey = apiKey;
      this.sessionId = sessionId;
      this.connection = null;
      this._signallingPath = (options && options.signallingPath) || DEFAULT_SIGNALLING_PATH;
      this._socket = null;
      this._connections = new Map();  // connectionId -> connection
      this._streams = new Map();  // streamId -> stream (remote and own)
      this._publishers = new Map();  // own streamId -> Publisher
      this._subscribers = new Map();  // streamId -> Subscriber
      this._pendingPublishes = new Map();  // requestId -> {publisher, completion}
      this._nextRequest = 1;
      this._keepalive = null;
      this._onPageHide = () => this.disconnect();
    }

    connect(token, completion) {
      if (this._socket) { if (completion) completion(otError("OT_CONNECT_FAILED", "already connected")); return; }
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const url = scheme + "//" + location.host + this._signallingPath +
        "?sessionId=" + encodeURIComponent(this.sessionId);
      // The token rides in Sec-WebSocket-Protocol, not the URL: servers and proxies log URLs.
      const socket = new WebSocket(url, ["dialbridge.signalling.v1", "bearer." + token]);
      this._socket = socket;
      let connected = false;
      socket.onmessage = (event) => {
        let message;
        try { message = JSON.parse(event.data); } catch (error) { return; }
        if (message.type === "connected") {
          connected = true;
          this._connected(message, completion);
        } else {
          this._handle(message);
        }
      };
      socket.onclose = (event) => {
        if (this._socket !== socket) return;
        if (!connected) {
          this._socket = null;
          const why = event.reason || "the signalling connection closed (code " + event.code + ")";
          if (completion) completion(otError("OT_CONNECT_FAILED", why));
          return;
        }
        const reason = event.code === 4000 ? "forceDisconnected" : "networkDisconnected";
        this._ended(reason);
      };
    }

    _connected(message, completion) {
      this.connection = makeConnection({ connectionId: message.connectionId, data: "", creationTime: Date.now() });
      this._connections.set(this.connection.connectionId, this.connection);
      this._keepalive = setInterval(() => this._send({ type: "ping" }), KEEPALIVE_MS);
      window.addEventListener("pagehide", this._onPageHide);
      this._dispatch("sessionConnected", { connections: [], streams: [] });
      if (completion) completion(undefined);
      // As OT does: on connecting you hear of your own connection, then of everyone and everything already there.
      this._dispatch("connectionCreated", { connection: this.connection });
      for (const json of message.connections) this._connectionCreated(json);
      for (const json of message.streams) this._streamCreated(json);
    }

    _handle(message) {
      switch (message.type) {
        case "connectionCreated": this._connectionCreated(message.connection); break;
        case "connectionDestroyed": this._connectionDestroyed(message.connectionId, message.reason); break;
        case "streamCreated": this._streamCreated(message.stream); break;
        case "streamDestroyed": this._streamDestroyed(message.streamId, message.reason); break;
        case "published": this._published(message); break;
        case "signal": this._signal(message).catch((error) => console.error("OT signalling failed", error)); break;
        case "sessionSignal": this._sessionSignal(message); break;
        case "sessionDisconnected": this._ended(message.reason); break;
        case "error": this._serverError(message); break;
        case "pong": break;
        default: break;
      }
    }

    _connectionCreated(json) {
      const connection = makeConnection(json);
      this._connections.set(connection.connectionId, connection);
      this._dispatch("connectionCreated", { connection });
    }

    _connectionDestroyed(connectionId, reason) {
      const connection = this._connections.get(connectionId);
      if (!connection) return;
      this._connections.delete(connectionId);
      for (const publisher of this._publishers.values()) publisher._closePeer(connectionId);
      this._dispatch("connectionDestroyed", { connection, reason });
    }

    _streamCreated(json) {
      const connection = this._connections.get(json.connectionId) || makeConnection({ connectionId: json.connectionId });
      const stream = {
        streamId: json.streamId, connection, name: json.name || "", hasAudio: json.hasAudio,
        hasVideo: json.hasVideo, videoType: json.videoType, creationTime: json.creationTime,
      };
      this._streams.set(stream.streamId, stream);
      this._dispatch("streamCreated", { stream });
    }

    _streamDestroyed(streamId, reason) {
      const stream = this._streams.get(streamId);
      if (!stream) return;
      this._streams.delete(streamId);
      const event = this._dispatch("streamDestroyed", { stream, reason });
      const subscriber = this._subscribers.get(streamId);
      if (subscriber && !event.isDefaultPrevented()) {
        this._subscribers.delete(streamId);
        subscriber._destroy(reason);
      }
    }

    publish(publisher, completion) {
      if (!(publisher instanceof Publisher)) publisher = new Publisher(undefined, publisher || {});
      if (!this.connection) {
        if (completion) completion(otError("OT_NOT_CONNECTED", "connect the session before publishing"));
        return publisher;
      }
      publisher.ready.then((media) => {
        const requestId = this._nextRequest++;
        this._pendingPublishes.set(requestId, { publisher, completion });
        this._send({
          type: "publish", requestId, name: publisher._props.name || "",
          hasAudio: media.getAudioTracks().length > 0, hasVideo: media.getVideoTracks().length > 0,
        });
      }, (error) => { if (completion) completion(error); });
      return publisher;
    }

    _published(message) {
      const pending = this._pendingPublishes.get(message.requestId);
      if (!pending) return;
      this._pendingPublishes.delete(message.requestId);
      const { publisher, completion } = pending;
      const stream = {
        streamId: message.stream.streamId, connection: this.connection, name: message.stream.name,
        hasAudio: message.stream.hasAudio, hasVideo: message.stream.hasVideo,
        videoType: message.stream.videoType, creationTime: message.stream.creationTime,
      };
      publisher.stream = stream;
      publisher.session = this;
      this._publishers.set(stream.streamId, publisher);
      publisher._dispatch("streamCreated", { stream });
      if (completion) completion(undefined);
    }

    unpublish(publisher) {
      if (!publisher || !publisher.stream) return;
      const streamId = publisher.stream.streamId;
      this._publishers.delete(streamId);
      this._send({ type: "unpublish", streamId });
      publisher._unpublished("unpublished");
    }

    subscribe(stream, target, props, completion) {
      if (typeof target === "function") { completion = target; target = undefined; props = undefined; }
      if (typeof props === "function") { completion = props; props = undefined; }
      if (!this.connection || !this._streams.has(stream.streamId)) {
        const error = otError("OT_STREAM_NOT_FOUND", "no such stream in this session");
        if (completion) completion(error);
        return null;
      }
      const previous = this._subscribers.get(stream.streamId);
      if (previous) previous._destroy("resubscribed");
      const subscriber = new Subscriber(this, stream, target, props);
      this._subscribers.set(stream.streamId, subscriber);
      this._watchIce(subscriber.peer, stream.connection.connectionId, stream.streamId);
      let reported = false;
      const report = (error) => {
        clearTimeout(timer);
        if (!reported) { reported = true; if (completion) completion(error); }
      };
      const timer = setTimeout(() => {
        if (!subscriber.peer) return;  // unsubscribed or gone meanwhile: nothing to report
        report(otError(
          "OT_STREAM_SUBSCRIBE_FAILED",
          `no network path to this participant within ${SUBSCRIBE_TIMEOUT_MS / 1000} s (a firewall may block WebRTC)`,
        ));
      }, SUBSCRIBE_TIMEOUT_MS);
      subscriber.peer.addEventListener("connectionstatechange", () => {
        const state = subscriber.peer && subscriber.peer.connectionState;
        if (state === "connected") { report(undefined); subscriber._dispatch("connected", {}); }
        if (state === "failed") report(otError("OT_STREAM_SUBSCRIBE_FAILED", "no network path to this participant"));
      });
      subscriber._offer().catch((error) => report(otError("OT_STREAM_SUBSCRIBE_FAILED", error.message)));
      return subscriber;
    }

    unsubscribe(subscriber) {
      if (!subscriber || this._subscribers.get(subscriber.stream.streamId) !== subscriber) return;
      this._subscribers.delete(subscriber.stream.streamId);
      this._send({ type: "signal", to: subscriber.stream.connection.connectionId,
                   streamId: subscriber.stream.streamId, kind: "bye", data: {} });
      subscriber._destroy("unsubscribed");
    }

    getSubscribersForStream(stream) {
      const subscriber = this._subscribers.get(stream.streamId);
      return subscriber ? [subscriber] : [];
    }

    getPublisherForStream(stream) { return this._publishers.get(stream.streamId); }

    disconnect() {
      if (!this._socket) return;
      const socket = this._socket;
      this._ended("clientDisconnected");
      socket.close(1000, "left the room");
    }

    _watchIce(peer, otherConnectionId, streamId) {
      peer.onicecandidate = (event) => {
        if (!event.candidate) return;
        this._send({ type: "signal", to: otherConnectionId, streamId, kind: "candidate",
                     data: event.candidate.toJSON() });
      };
    }

    // The server's signal (Vonage's signal REST API): OT raises "signal" and "signal:<type>", `from` null.
    _sessionSignal(message) {
      const fields = { type: "signal:" + message.signalType, data: message.data, from: null };
      this._dispatch("signal", fields);
      this._dispatch("signal:" + message.signalType, fields);
    }

    async _signal(message) {
      const publisher = this._publishers.get(message.streamId);
      if (publisher) {  // about our own stream: from one of its subscribers
        if (message.kind === "offer") return publisher._answer(this, message.from, message.data);
        if (message.kind === "bye") return publisher._closePeer(message.from);
        const peer = publisher._peers.get(message.from);
        if (peer && message.kind === "candidate") return peer.addIceCandidate(message.data);
        return undefined;
      }
      const subscriber = this._subscribers.get(message.streamId);
      if (!subscriber || !subscriber.peer || message.from !== subscriber.stream.connection.connectionId) return undefined;
      if (message.kind === "answer") {
        await subscriber.peer.setRemoteDescription(message.data);
        subscriber._answeredResolve();
        return undefined;
      }
      if (message.kind === "candidate") {
        await subscriber.answered;
        if (subscriber.peer) await subscriber.peer.addIceCandidate(message.data);
      }
      return undefined;
    }

    _serverError(message) {
      const pending = this._pendingPublishes.get(message.requestId);
      if (pending) {
        this._pendingPublishes.delete(message.requestId);
        if (pending.completion) pending.completion(otError("OT_PERMISSION_DENIED", message.message));
        return;
      }
      console.warn("dialbridge signalling error: " + message.message);
    }

    // Tear everything down once; later close events from the same socket are ignored.
    _ended(reason) {
      if (!this._socket) return;
      this._socket = null;
      clearInterval(this._keepalive);
      window.removeEventListener("pagehide", this._onPageHide);
      for (const subscriber of this._subscribers.values()) subscriber._destroy(reason);
      this._subscribers.clear();
      for (const publisher of this._publishers.values()) publisher._unpublished(reason);
      this._publishers.clear();
      this._streams.clear();
      this._connections.clear();
      this._dispatch("sessionDisconnected", { reason });
      this.connection = null;
    }

    _send(message) {
      if (this._socket && this._socket.readyState === WebSocket.OPEN) this._socket.send(JSON.stringify(message));
    }
  }

  window.OT = {
    version: "dialbridge-embedded",
    initSession(apiKey, sessionId, options) { return new Session(apiKey, sessionId, options); },
    initPublisher(target, props, completion) {
      if (typeof props === "function") { completion = props; props = undefined; }
      return new Publisher(target, props, completion);
    },
    checkSystemRequirements() { return typeof RTCPeerConnection === "function" ? 1 : 0; },
  };
})();
