// The room page. Written once against the subset of Vonage's OT browser API that both backends provide:
// Vonage's own SDK, or dialbridge's /static/ot-embedded.js. No framework, no build step.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("room-config").textContent);
  const $ = (id) => document.getElementById(id);
  window.dialbridgeRoom = { config, events: [] };  // the tests read what happened here
  const note = (type, detail) => window.dialbridgeRoom.events.push({ type, ...detail });

  // ---- words -----------------------------------------------------------------------------------------------------
  const statusLine = $("status");
  const say = (text) => { statusLine.textContent = text; };

  // Failures, one line per cause (a later message of the same cause replaces the earlier one), in #alert: role=alert,
  // so screen readers announce each as it appears.
  const alertBox = $("alert");
  function warn(cause, text) {
    let line = alertBox.querySelector(`[data-cause="${cause}"]`);
    if (!text) { if (line) line.remove(); return; }
    if (!line) {
      line = document.createElement("p");
      line.dataset.cause = cause;
      alertBox.append(line);
    }
    line.textContent = text;
  }

  // A call's state in words: the detailed status when it is a known one (busy, no answer…), else the state.
  const STATE_WORDS = {
    dialling: "Dialling…", started: "Calling…", ringing: "Ringing…", answered: "Answered", live: "Connected",
    in_conference: "In the room", busy: "Busy", unanswered: "No answer", timeout: "No answer", no_answer: "No answer",
    rejected: "Declined", cancelled: "Cancelled", failed: "Failed", completed: "Call ended",
    disconnected: "Call ended", ended: "Ended", ending: "Hanging up…",
  };
  // The ends of a call the room placed, as the participant list and signals give them (besides plain "ended").
  const FINAL_STATES = new Set(["busy", "no_answer", "failed", "completed"]);
  const FINAL_ROW_MS = 8000;
  const spell = (text) => { const words = String(text).replace(/_/g, " "); return words.charAt(0).toUpperCase() + words.slice(1); };
  function stateWords(state, status) {
    if (status && STATE_WORDS[status]) return STATE_WORDS[status];
    if (status && state === "ended") return spell(status);  // an ending we have no word for: say it as it came
    return STATE_WORDS[state] || spell(state || "unknown");
  }

  // A number as the page may show it: the server masks the numbers it sends; a SIP participant's stream name may be
  // the number it dialled, so only its last four digits are shown.
  function maskedNumber(text) {
    const digits = String(text || "").replace(/^\+/, "");
    return /^\d{8,15}$/.test(digits) ? `Phone ••• ${digits.slice(-4)}` : (text || "Phone");
  }

  const svgIcon = (name, className) => {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "icon" + (className ? " " + className : ""));
    svg.setAttribute("aria-hidden", "true");
    const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
    use.setAttribute("href", "#icon-" + name);
    svg.append(use);
    return svg;
  };
  const span = (className, text) => {
    const element = document.createElement("span");
    element.className = className;
    element.textContent = text;
    return element;
  };
  function button(className, text, label, onClick) {
    const element = document.createElement("button");
    element.type = "button";
    element.className = className;
    element.textContent = text;
    if (label) element.setAttribute("aria-label", label);
    element.addEventListener("click", onClick);
    return element;
  }

  // ---- the room's API (the page's participant token; JSON errors whose message says what to do) -----------------
  async function roomApi(method, action, body) {
    let response;
    try {
      response = await fetch(`/api/rooms/${encodeURIComponent(config.roomId)}/${action}`, {
        method,
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${config.participantToken}` },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new Error(`the server did not answer (${error.message}): check your network`);
    }
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error((answer.error && answer.error.message) || `${action} failed (HTTP ${response.status})`);
    }
    return answer;
  }

  // ---- who is who: a connection's token data marks SIP participants (the bridge, phone dial-outs) ---------------
  function connectionInfo(connection) {
    let data = null;
    try { data = connection && connection.data ? JSON.parse(connection.data) : null; } catch (error) { data = null; }
    const sip = !!(data && data.sip === true);
    return {
      sip,
      conference: sip && data.dialOut === "conference",
      name: data && typeof data.name === "string" ? data.name : "",
    };
  }

  // ---- the video grid ----------------------------------------------------------------------------------------------
  const subscribers = $("subscribers");
  const SPEAKING_LEVEL = 0.01;  // RMS of full scale, -40 dBFS: speech (after the browser's noise suppression)
  const SPEAKING_HOLD_MS = 400;  // the indicator does not flicker between syllables

  function speakingMeter(element, onChange) {
    let until = 0;
    let speaking = false;
    return (event) => {
      const now = Date.now();
      if (event.audioLevel > SPEAKING_LEVEL) until = now + SPEAKING_HOLD_MS;
      const next = now < until;
      if (next !== speaking) {
        speaking = next;
        element.dataset.speaking = String(speaking);
        if (onChange) onChange(speaking);
      }
    };
  }

  function tileFor(stream) {
    const info = connectionInfo(stream.connection);
    const tile = document.createElement("figure");
    tile.className = "tile";
    tile.id = "stream-" + stream.streamId;
    tile.dataset.connectionId = stream.connection.connectionId;
    tile.dataset.speaking = "false";
    let name = stream.name || info.name || "Guest";
    if (info.conference) name = "Phone conference";
    else if (info.sip) name = maskedNumber(stream.name || info.name);
    const audioOnly = !stream.hasVideo;
    if (audioOnly) tile.classList.add("audio-only");
    if (info.sip) tile.classList.add("phone");
    const holder = document.createElement("div");
    holder.className = "holder";
    const placeholder = document.createElement("div");
    placeholder.className = "placeholder";
    placeholder.append(svgIcon(info.sip ? "phone" : "person", "big"));
    const caption = document.createElement("figcaption");
    if (info.sip) caption.append(svgIcon("phone"));
    caption.append(span("name", name));
    const trouble = span("trouble", "");
    tile.append(holder, placeholder, caption, trouble);
    return { tile, holder, name, trouble };
  }

  // Columns for the number of tiles: 1; 2 up to 4; 3 up to 9; then 4 (2 at most on a phone: see room.css).
  const grid = $("grid");
  function layoutGrid() {
    const tiles = grid.querySelectorAll(".tile").length;
    const cols = tiles <= 1 ? 1 : tiles <= 4 ? 2 : tiles <= 9 ? 3 : 4;
    grid.style.setProperty("--cols", String(cols));
    grid.style.setProperty("--rows", String(Math.ceil(tiles / cols)));
    grid.style.setProperty("--narrow-cols", String(Math.min(cols, 2)));
  }

  // ---- the people list: browsers from the session's connections (both backends), phones from the API + signals --
  const participantList = $("participant-list");
  const participantsStatus = $("participants-status");
  // The side panel scrolls on its own: a line saying what went wrong may sit below its fold, so it is brought into
  // view as it is written (only as far as needed, and never for a line cleared).
  function tell(line, text) {
    line.textContent = text;
    if (text) line.scrollIntoView({ block: "nearest" });
  }
  const peopleCount = $("people-count");
  const countPeople = () => { peopleCount.textContent = `(${participantList.children.length})`; };

  function showBrowser(connection, isSelf) {
    if (connectionInfo(connection).sip) return;  // the bridge and dial-outs: their callers are listed as phones
    if (participantList.querySelector(`li[data-connection-id="${CSS.escape(connection.connectionId)}"]`)) return;
    const item = document.createElement("li");
    item.className = isSelf ? "browser self" : "browser";
    item.dataset.connectionId = connection.connectionId;
    item.dataset.speaking = "false";
    item.append(svgIcon("person"), span("who", isSelf ? "You" : connectionInfo(connection).name || "Guest"),
                span("state", isSelf ? "this browser" : "browser"), span("speaking-flag", "speaking"));
    if (isSelf) participantList.prepend(item);
    else participantList.insertBefore(item, participantList.querySelector("li.phone"));  // browsers, then phones
    countPeople();
  }

  function forgetBrowser(connectionId) {
    const item = participantList.querySelector(`li[data-connection-id="${CSS.escape(connectionId)}"]`);
    if (item) item.remove();
    countPeople();
  }

  function renameBrowser(connectionId, name) {
    const item = participantList.querySelector(`li[data-connection-id="${CSS.escape(connectionId)}"]`);
    if (item && !item.classList.contains("self")) item.querySelector(".who").textContent = name;
  }

  function browserSpeaking(connectionId, speaking) {
    const item = participantList.querySelector(`li[data-connection-id="${CSS.escape(connectionId)}"]`);
    if (item) item.dataset.speaking = String(speaking);
  }

  // A phone participant's row is built once and then updated in place: signals (speaking, mute) arrive every second
  // or so, and a row rebuilt under a pointer or the keyboard's focus would swallow the click or lose the focus.
  function renderPhone(participant) {
    let item = participantList.querySelector(`li[data-call-id="${CSS.escape(participant.call_id)}"]`);
    if (participant.dial_out) showPlacedCall(participant);
    if (participant.state === "ended" || (FINAL_STATES.has(participant.state) && !item)) {
      if (item) item.remove();
      countPeople();
      note("phoneLeft", { callId: participant.call_id });
      return;
    }
    if (!item) item = phoneRow(participant.call_id);
    // How a call the room placed ended (busy, no answer…) stays in its row a moment, then the row leaves; the
    // calls the room placed keep saying it.
    const final = FINAL_STATES.has(participant.state);
    item.querySelector(".controls").hidden = final;
    if (final && !item.dataset.leaving) {
      item.dataset.leaving = "true";
      setTimeout(() => { item.remove(); countPeople(); note("phoneLeft", { callId: participant.call_id }); },
                 FINAL_ROW_MS);
    }
    item.dataset.state = participant.state;
    item.dataset.muted = String(participant.muted);
    item.dataset.speaking = String(participant.speaking === true);
    item.querySelector(".number").textContent = participant.number;
    item.querySelector(".state").textContent = stateWords(participant.state, participant.status);
    item.querySelector(".muted-flag").hidden = !participant.muted;
    const mute = item.querySelector(".mute");
    mute.hidden = participant.dial_out && participant.state !== "in_conference";  // nothing to mute while it rings
    mute.textContent = participant.muted ? "Unmute" : "Mute";
    mute.setAttribute("aria-label", `${mute.textContent} ${participant.number}`);
    item.querySelector(".hang-up").setAttribute("aria-label", `Hang up ${participant.number}`);
    countPeople();
    note("phoneShown", { callId: participant.call_id, state: participant.state, muted: participant.muted });
  }

  function phoneRow(callId) {
    const item = document.createElement("li");
    item.className = "phone";
    item.dataset.callId = callId;
    const controls = document.createElement("span");
    controls.className = "controls";
    const mute = button("mute", "Mute", null,
      () => act(mute, "mute", { call_id: callId, muted: item.dataset.muted !== "true" }));
    const hangUp = button("hang-up danger", "Hang up", null, () => act(hangUp, "hang-up", { call_id: callId }));
    controls.append(mute, hangUp);
    // The number has a line of its own: what changes every second or so (speaking, muted) changes only the line
    // under it, so the row never reflows under a pointer.
    const detail = span("detail", "");
    detail.append(span("state", ""), span("muted-flag", "muted"), span("speaking-flag", "speaking"), controls);
    item.append(svgIcon("phone"), span("number", ""), detail);
    participantList.append(item);
    return item;
  }

  async function act(control, action, body) {
    const hadFocus = document.activeElement === control;  // disabling a button drops the focus: given back below
    control.disabled = true;
    try {
      const answer = await roomApi("POST", action, body);
      if (answer) renderPhone(asParticipant(answer));
      tell(participantsStatus, "");
    } catch (error) {
      tell(participantsStatus, `Could not ${action.replace("-", " ")}: ${error.message}`);
    } finally {
      control.disabled = false;
      if (hadFocus && control.isConnected) control.focus();
    }
  }

  async function loadParticipants() {
    try {
      const answer = await roomApi("GET", "participants");
      for (const participant of answer.participants) if (participant.kind === "phone") renderPhone(participant);
      tell(participantsStatus, "");
    } catch (error) {
      tell(participantsStatus, `Could not list the phone participants: ${error.message}`);
    }
  }

  // ---- calls the room placed: the phone conference bridge and phone dial-outs -------------------------------------
  const calls = $("phone-calls");
  const phoneStatus = $("phone-status");
  const conferenceButton = $("dial-conference");
  const MAX_PLACED_SHOWN = 8;

  // The bridge's state is the room's, not this tab's: it is live while its SIP connection is in the session (every
  // tab sees that connection come and go), and its id (to hang it up) is asked of the server when this tab did not
  // dial it.
  const bridge = { connections: new Set(), callId: null, dialling: false, placed: false, ending: false };

  function renderBridge() {
    const live = bridge.connections.size > 0 || bridge.placed;
    conferenceButton.disabled = live || bridge.dialling || !session.connection;
    conferenceButton.textContent = live ? "Phone conference is in the room"
      : bridge.dialling ? "Bringing in the phone conference…" : "Bring in the phone conference";
    let row = calls.querySelector("li.conference");
    if (!live && !bridge.dialling) {
      if (row) row.remove();
      return;
    }
    if (!row) {
      row = document.createElement("li");
      row.className = "conference";
      calls.prepend(row);
    }
    let state = "dialling";
    if (bridge.ending) state = "ending";
    else if (bridge.connections.size > 0) state = "in_conference";
    else if (bridge.placed) state = "live";
    row.dataset.state = state;
    row.replaceChildren(svgIcon("phone"), span("who", "Phone conference"), span("state", stateWords(state)));
    if (live) {
      const hangUp = button("hang-up danger", "Hang up", "Hang up the phone conference", hangUpBridge);
      hangUp.disabled = bridge.ending;
      row.append(hangUp);
    }
  }

  async function learnBridgeId() {
    try {
      const answer = await roomApi("GET", "phone-bridge");
      if (answer.bridge && !bridge.callId) bridge.callId = answer.bridge.call_id;
    } catch (error) {
      tell(phoneStatus, `Could not look up the phone conference: ${error.message}`);
    }
    renderBridge();
  }

  async function bringInConference() {
    bridge.dialling = true;
    tell(phoneStatus, "");
    renderBridge();
    try {
      const placed = await roomApi("POST", "dial-out", {});
      bridge.callId = placed.call_id;
      bridge.placed = true;
    } catch (error) {
      tell(phoneStatus, `Could not bring in the phone conference: ${error.message}`);
    } finally {
      bridge.dialling = false;
      renderBridge();
    }
  }

  async function hangUpBridge() {
    bridge.ending = true;
    renderBridge();
    try {
      if (!bridge.callId) await learnBridgeId();
      if (!bridge.callId) throw new Error("the server has no open conference call for this room any more");
      await roomApi("POST", "hang-up", { call_id: bridge.callId });
      tell(phoneStatus, "");
      bridge.placed = false;  // its connection leaving (every tab sees it) ends the rest
    } catch (error) {
      tell(phoneStatus, `Could not hang up the phone conference: ${error.message}`);
    } finally {
      bridge.ending = false;
      renderBridge();
    }
  }

  function bridgeJoined(connection) {
    bridge.connections.add(connection.connectionId);
    if (!bridge.callId) learnBridgeId();
    renderBridge();
  }

  function bridgeLeft(connectionId) {
    if (!bridge.connections.delete(connectionId)) return;
    if (bridge.connections.size === 0) { bridge.callId = null; bridge.placed = false; }
    renderBridge();
  }

  // A phone dial-out's row: from this tab's request, then kept up to date by the participant list and signals
  // (every tab). Final states (busy, no answer…) stay shown: that is what the person who dialled wants to know.
  function showPlacedCall(call) {
    const number = call.number || maskedNumber(call.target);
    // Once the voice side answers, a dial-out is listed under its call's id: the row of the same number follows it.
    let row = calls.querySelector(`li[data-call-id="${CSS.escape(call.call_id)}"]`) ||
      [...calls.querySelectorAll("li.placed")].find((li) => li.dataset.number === number && li.dataset.ended !== "true");
    if (!row) {
      row = document.createElement("li");
      row.className = "placed";
      calls.querySelector("li.conference") ? calls.querySelector("li.conference").after(row) : calls.prepend(row);
      while (calls.querySelectorAll("li.placed").length > MAX_PLACED_SHOWN) calls.querySelector("li.placed:last-child").remove();
    }
    const ended = call.state === "ended" || FINAL_STATES.has(call.state);
    row.dataset.callId = call.call_id;
    row.dataset.number = number;
    row.dataset.state = call.status || call.state;
    row.dataset.ended = String(ended);
    row.replaceChildren(svgIcon("phone"), span("who", number), span("state", stateWords(call.state, call.status)));
    if (!ended) {
      const hangUp = button("hang-up danger", "Hang up", `Hang up ${number}`, async () => {
        hangUp.disabled = true;
        try {
          renderPhone(asParticipant(await roomApi("POST", "hang-up", { call_id: row.dataset.callId })));
          tell(phoneStatus, "");
        } catch (error) {
          tell(phoneStatus, `Could not hang up ${number}: ${error.message}`);
          hangUp.disabled = false;
        }
      });
      row.append(hangUp);
    }
  }

  // What the API answers for a dial-out (`{call_id, kind, target, state}`: dialling, live, ended, failed) as the
  // phone participant the list and signals name it; a phone participant as it is.
  function asParticipant(answer) {
    if (answer.number !== undefined) return answer;
    const over = answer.state === "ended" || answer.state === "failed";
    return { kind: "phone", call_id: answer.call_id, number: maskedNumber(answer.target), muted: false,
             speaking: null, dial_out: true, state: over ? "ended" : answer.state, status: answer.state };
  }

  // E.164 as the server takes it (config.py's E164): +, a country code not starting with 0, 7 to 15 digits in all.
  // Spaces, dashes, dots and brackets people type are dropped first.
  function numberProblem(typed) {
    const number = typed.replace(/[\s().-]/g, "");
    if (!number) return [null, "Type the number to call, e.g. +14155550123."];
    if (number.startsWith("00")) return [null, `Write the leading 00 as +: ${"+" + number.slice(2)}`];
    if (!number.startsWith("+")) return [null, "Start with + and the country code, e.g. +1 for the US or +44 for the UK."];
    const wrong = number.slice(1).match(/[^0-9]/);
    if (wrong) return [null, `Only digits after the +: remove “${wrong[0]}”.`];
    if (number[1] === "0") return [null, "A country code never starts with 0: check the digits after the +."];
    const digits = number.length - 1;
    if (digits < 7) return [null, `Too short: ${digits} digits; with its country code a number has 7 to 15.`];
    if (digits > 15) return [null, `Too long: ${digits} digits; with its country code a number has 7 to 15.`];
    return [number, ""];
  }

  const numberField = $("number");
  const numberError = $("number-error");
  function showNumberProblem(problem) {
    tell(numberError, problem);
    if (problem) numberField.setAttribute("aria-invalid", "true"); else numberField.removeAttribute("aria-invalid");
  }
  numberField.addEventListener("input", () => { if (numberError.textContent) showNumberProblem(numberProblem(numberField.value)[1]); });

  async function callNumber(event) {
    event.preventDefault();
    const [number, problem] = numberProblem(numberField.value);
    showNumberProblem(problem);
    if (!number) { numberField.focus(); return; }
    const submit = event.submitter || $("dial-number").querySelector("button");
    submit.disabled = true;
    tell(phoneStatus, "");
    try {
      const placed = await roomApi("POST", "dial-out", { number });
      if (!calls.querySelector(`li[data-call-id="${CSS.escape(placed.call_id)}"]`)) showPlacedCall(asParticipant(placed));
      numberField.value = "";
    } catch (error) {
      tell(phoneStatus, `Could not call ${number}: ${error.message}`);
    } finally {
      submit.disabled = false;
    }
  }

  // ---- the session ---------------------------------------------------------------------------------------------------
  const session = OT.initSession(config.apiKey, config.sessionId);
  window.dialbridgeRoom.session = session;
  let leaving = false;

  session.on("streamCreated", (event) => {
    const stream = event.stream;
    note("streamCreated", { streamId: stream.streamId });
    const { tile, holder, name, trouble } = tileFor(stream);
    renameBrowser(stream.connection.connectionId, name);
    subscribers.appendChild(tile);
    layoutGrid();
    const subscriber = session.subscribe(stream, holder, { insertMode: "append", width: "100%", height: "100%" },
      (error) => {
        if (!error) { warn("subscribe-" + stream.streamId, ""); return; }
        tile.classList.add("failed");
        trouble.textContent = "No connection";
        warn("subscribe-" + stream.streamId, `Could not show a participant (${name}): ${error.message}`);
      });
    if (subscriber) {
      const connectionId = stream.connection.connectionId;
      subscriber.on("audioLevelUpdated", speakingMeter(tile, (speaking) => browserSpeaking(connectionId, speaking)));
      // A camera stopped on the other side: their name and icon instead of a frozen or black picture.
      subscriber.on("videoDisabled", () => tile.classList.add("audio-only"));
      subscriber.on("videoEnabled", () => tile.classList.toggle("audio-only", !stream.hasVideo));
    }
  });
  session.on("streamDestroyed", (event) => {
    note("streamDestroyed", { streamId: event.stream.streamId });
    const tile = $("stream-" + event.stream.streamId);
    if (tile) tile.remove();
    layoutGrid();
    warn("subscribe-" + event.stream.streamId, "");
  });
  session.on("connectionCreated", (event) => {
    note("connectionCreated", { connectionId: event.connection.connectionId });
    const isSelf = session.connection && event.connection.connectionId === session.connection.connectionId;
    if (connectionInfo(event.connection).conference) bridgeJoined(event.connection);
    showBrowser(event.connection, isSelf);
  });
  session.on("connectionDestroyed", (event) => {
    note("connectionDestroyed", { connectionId: event.connection.connectionId });
    bridgeLeft(event.connection.connectionId);
    forgetBrowser(event.connection.connectionId);
  });
  session.on("sessionDisconnected", (event) => {
    note("sessionDisconnected", { reason: event.reason });
    if (leaving) return;
    const why = {
      forceDisconnected: "You were removed from the room.",
      networkDisconnected: "Lost the connection to the room: check your network, then rejoin.",
    }[event.reason] || `Disconnected from the room (${event.reason}).`;
    warn("session", why);
    showLeft("You are disconnected");
  });
  session.on("signal:participants", (event) => {
    let payload;
    try { payload = JSON.parse(event.data); } catch (error) { return; }
    if (payload && payload.participant && payload.participant.kind === "phone") {
      note("participantSignal", { callId: payload.participant.call_id, state: payload.participant.state });
      renderPhone(payload.participant);
    }
  });

  // ---- your camera and microphone: both, else the microphone alone, else listen only ------------------------------
  const MEDIA_WHY = {
    OT_USER_MEDIA_ACCESS_DENIED: "the browser was not allowed to use it",
    OT_NO_DEVICES_FOUND: "none was found",
    OT_HARDWARE_UNAVAILABLE: "another application is using it",
  };
  const mediaWhy = (error) => MEDIA_WHY[error.name] || error.message;
  const selfTile = $("self-tile");
  let publisher = null;

  // Your name: on your tile in the others' pages (the stream's name, on both backends), kept in this browser.
  const NAME_KEY = "dialbridge.name";
  const MAX_NAME = 40;
  const savedName = () => { try { return localStorage.getItem(NAME_KEY) || ""; } catch (error) { return ""; } };

  function initPublisher(props) {
    return new Promise((resolve) => {
      const created = OT.initPublisher("publisher", {
        insertMode: "append", width: "100%", height: "100%", name: savedName(), ...props,
      }, (error) => resolve({ publisher: created, error }));
    });
  }

  async function startMedia() {
    const both = await initPublisher({});
    if (!both.error) {
      cameraButton.disabled = false;
      return both.publisher;
    }
    both.publisher.destroy();
    const micOnly = await initPublisher({ videoSource: null });
    if (!micOnly.error) {
      warn("media", `No camera (${mediaWhy(both.error)}): you joined with your microphone only. ` +
                    "To use a camera, allow it in the browser's site settings and rejoin.");
      cameraButton.disabled = true;
      cameraOn = false;
      renderToggles();
      return micOnly.publisher;
    }
    micOnly.publisher.destroy();
    warn("media", `No microphone or camera (${mediaWhy(micOnly.error)}): you can watch and listen, but nobody ` +
                  "hears you. Allow them in the browser's site settings, then rejoin.");
    selfTile.classList.add("audio-only");
    selfTile.querySelector(".name").textContent = "You (listening only)";
    micButton.disabled = true;
    cameraButton.disabled = true;
    micOn = false;
    cameraOn = false;
    renderToggles();
    return null;
  }

  const micButton = $("toggle-mic");
  const cameraButton = $("toggle-camera");
  let micOn = true;
  let cameraOn = true;

  function renderToggles() {
    micButton.dataset.off = String(!micOn);
    micButton.querySelector(".label").textContent = micOn ? "Mute" : "Unmute";
    micButton.setAttribute("aria-label", micOn ? "Mute your microphone" : "Unmute your microphone");
    cameraButton.dataset.off = String(!cameraOn);
    cameraButton.querySelector(".label").textContent = cameraOn ? "Stop camera" : "Start camera";
    cameraButton.setAttribute("aria-label", cameraOn ? "Stop your camera" : "Start your camera");
    selfTile.dataset.micOff = String(!micOn);
    selfTile.classList.toggle("audio-only", !cameraOn);
  }
  micButton.addEventListener("click", () => {
    micOn = !micOn;
    if (publisher) publisher.publishAudio(micOn);
    renderToggles();
    note("micToggled", { on: micOn });
  });
  cameraButton.addEventListener("click", () => {
    cameraOn = !cameraOn;
    if (publisher) publisher.publishVideo(cameraOn);
    renderToggles();
    note("cameraToggled", { on: cameraOn });
  });

  // ---- joining and leaving -------------------------------------------------------------------------------------------
  function adopt(created) {
    publisher = created;
    if (publisher) {
      micButton.disabled = false;
      publisher.publishAudio(micOn);
      publisher.publishVideo(cameraOn);
      publisher.on("audioLevelUpdated", speakingMeter(selfTile, (speaking) => {
        if (session.connection) browserSpeaking(session.connection.connectionId, speaking);
      }));
    }
    return publisher;
  }
  const media = startMedia().then(adopt);
  const publishFailed = (error) => {
    if (error) warn("publish", `Could not send your camera and microphone: ${error.message}`);
  };

  // A new name needs a new stream (a stream's name is set when it is published): publish again under it.
  const nameField = $("name-field");
  nameField.value = savedName();
  $("your-name").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = nameField.value.trim().slice(0, MAX_NAME);
    nameField.value = name;
    try { localStorage.setItem(NAME_KEY, name); } catch (error) { /* private mode: this visit only */ }
    $("name-status").textContent = name ? `Others now see you as ${name}.` : "Others now see you as Guest.";
    if (!publisher || !publisher.stream || leaving) return;
    publisher.destroy();
    publisher = null;
    const created = adopt(await startMedia());
    if (created && session.connection && !leaving) session.publish(created, publishFailed);
  });

  session.connect(config.token, (error) => {
    if (error) {
      say("Not connected.");
      warn("session", `Could not connect to the room (${error.message}): check your network, then rejoin.`);
      showLeft("You are not in the room");
      return;
    }
    note("sessionConnected", {});
    say("Connected.");
    renderBridge();
    loadParticipants();
    media.then((ready) => {
      if (!ready || leaving) return;
      session.publish(ready, publishFailed);
    });
  });

  function showLeft(heading) {
    $("left-heading").textContent = heading;
    $("grid").hidden = true;
    $("left").hidden = false;
    for (const control of [micButton, cameraButton, $("leave"), conferenceButton]) control.disabled = true;
    say("Not in the room.");
    $("rejoin").focus();
  }

  $("leave").addEventListener("click", () => {
    leaving = true;
    session.disconnect();
    if (publisher) publisher.destroy();
    note("left", {});
    showLeft("You left the room");
  });
  $("rejoin").addEventListener("click", () => location.reload());  // a fresh token and a fresh start

  conferenceButton.addEventListener("click", bringInConference);
  $("dial-number").addEventListener("submit", callNumber);

  // ---- the invitation ----------------------------------------------------------------------------------------------
  function invitation() {
    const lines = [`Join room ${config.roomId}: ${location.origin}/room/${encodeURIComponent(config.roomId)}`];
    if (config.dialInNumber) lines.push(`By phone: call ${config.dialInNumber}, then key the PIN ${config.pin} and #`);
    if (config.sipAddress) {
      lines.push(`From a SIP phone: call ${config.sipAddress}, then key the PIN ${config.pin} and #`);
      lines.push(`From a browser, without a camera: ${location.origin}/phone (it asks for the PIN)`);
    }
    if (!config.dialInNumber && !config.sipAddress) lines.push(`PIN: ${config.pin}`);
    return lines.join("\n");
  }

  $("copy-invite").addEventListener("click", async () => {
    const copied = $("copy-status");
    const text = invitation();
    try {
      await navigator.clipboard.writeText(text);
      copied.className = "";
      copied.textContent = "Invitation copied: paste it into a message.";
    } catch (error) {
      // No clipboard (a plain-http page from another machine, or refused): the words to copy by hand.
      copied.className = "error";
      copied.textContent = `Could not copy (${error.message}). Copy this instead: ${text}`;
    }
  });

  renderToggles();
  renderBridge();
  countPeople();
  layoutGrid();
})();
