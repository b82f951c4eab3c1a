// The room page. Written once against the subset of Vonage's OT browser API that both backends provide:
// Vonage's own SDK, or dialbridge's /static/ot-embedded.js.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("room-config").textContent);
  const status = document.getElementById("status");
  const say = (text) => { status.textContent = text; };
  window.dialbridgeRoom = { config, events: [] };  // the tests read what happened here
  const note = (type, detail) => window.dialbridgeRoom.events.push({ type, ...detail });

  const session = OT.initSession(config.apiKey, config.sessionId);
  window.dialbridgeRoom.session = session;

  session.on("streamCreated", (event) => {
    note("streamCreated", { streamId: event.stream.streamId });
    const holder = document.createElement("div");
    holder.className = "subscriber";
    holder.id = "stream-" + event.stream.streamId;
    document.getElementById("subscribers").appendChild(holder);
    session.subscribe(event.stream, holder, { insertMode: "append", width: "100%", height: "100%" }, (error) => {
      if (error) say("Could not show a participant: " + error.message);
    });
  });
  session.on("streamDestroyed", (event) => {
    note("streamDestroyed", { streamId: event.stream.streamId });
    const holder = document.getElementById("stream-" + event.stream.streamId);
    if (holder) holder.remove();
  });
  session.on("connectionCreated", (event) => note("connectionCreated", { connectionId: event.connection.connectionId }));
  session.on("connectionDestroyed", (event) => note("connectionDestroyed", { connectionId: event.connection.connectionId }));
  session.on("sessionDisconnected", (event) => { note("sessionDisconnected", { reason: event.reason }); say("Disconnected."); });

  const publisher = OT.initPublisher("publisher", { insertMode: "append", width: "100%", height: "100%" }, (error) => {
    if (error) say("Camera or microphone unavailable: " + error.message);
  });

  session.connect(config.token, (error) => {
    if (error) { say("Could not connect: " + error.message); return; }
    note("sessionConnected", {});
    say("Connected.");
    session.publish(publisher, (err) => { if (err) say("Could not publish: " + err.message); });
  });

  // Phone: pull the phone conference into the room, call a phone, hang up. The server checks the participant
  // token and answers JSON errors whose message says what to do; they are shown as they are.
  const phoneStatus = document.getElementById("phone-status");
  const calls = document.getElementById("phone-calls");

  async function roomAction(action, body) {
    const response = await fetch(`/api/rooms/${encodeURIComponent(config.roomId)}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${config.participantToken}` },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = (answer.error && answer.error.message) || `${action} failed (HTTP ${response.status})`;
      throw new Error(message);
    }
    return answer;
  }

  function showCall(call) {
    const item = document.createElement("li");
    item.dataset.callId = call.call_id;
    const label = call.kind === "conference" ? "Phone conference" : call.target;
    item.append(`${label} — ${call.state} `);
    const hangUp = document.createElement("button");
    hangUp.type = "button";
    hangUp.textContent = "Hang up";
    hangUp.addEventListener("click", async () => {
      hangUp.disabled = true;
      try {
        await roomAction("hang-up", { call_id: call.call_id });
        item.remove();
        phoneStatus.textContent = "";
      } catch (error) {
        phoneStatus.textContent = error.message;
        hangUp.disabled = false;
      }
    });
    item.append(hangUp);
    calls.append(item);
  }

  async function dial(body, button) {
    button.disabled = true;
    phoneStatus.textContent = "Dialling…";
    try {
      showCall(await roomAction("dial-out", body));
      phoneStatus.textContent = "";
    } catch (error) {
      phoneStatus.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  }

  // Phone participants: the list from GET /participants, kept live by the server's `participants` signals (the same
  // on both backends), with mute/unmute and hang-up for each phone participant. Numbers arrive masked.
  const participantList = document.getElementById("participant-list");
  const participantsStatus = document.getElementById("participants-status");
  const STATE_LABELS = { ringing: "ringing", answered: "answered", in_conference: "in the room", ended: "left" };

  function renderPhone(participant) {
    let item = participantList.querySelector(`li[data-call-id="${CSS.escape(participant.call_id)}"]`);
    if (participant.state === "ended") {
      if (item) item.remove();
      note("phoneLeft", { callId: participant.call_id });
      return;
    }
    if (!item) {
      item = document.createElement("li");
      item.dataset.callId = participant.call_id;
      participantList.append(item);
    }
    item.dataset.state = participant.state;
    item.dataset.muted = String(participant.muted);
    item.replaceChildren();
    const icon = document.createElement("span");
    icon.className = "icon";
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = "📞";
    const number = document.createElement("span");
    number.className = "number";
    number.textContent = participant.number;
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = STATE_LABELS[participant.state] || participant.state;
    item.append(icon, number, state);
    if (participant.muted) {
      const flag = document.createElement("span");
      flag.className = "muted-flag";
      flag.textContent = "muted";
      item.append(flag);
    }
    const controlButton = (className, text, action, body) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = className;
      button.textContent = text;
      button.setAttribute("aria-label", `${text} ${participant.number}`);
      button.addEventListener("click", () => control(button, action, body));
      item.append(button);
    };
    if (!participant.dial_out || participant.state === "in_conference") {
      const text = participant.muted ? "Unmute" : "Mute";
      controlButton("mute", text, "mute", { call_id: participant.call_id, muted: !participant.muted });
    }
    controlButton("hang-up", "Hang up", "hang-up", { call_id: participant.call_id });
    note("phoneShown", { callId: participant.call_id, state: participant.state, muted: participant.muted });
  }

  async function control(button, action, body) {
    button.disabled = true;
    try {
      const answer = await roomAction(action, body);
      if (answer && answer.kind === "phone") renderPhone(answer);
      participantsStatus.textContent = "";
    } catch (error) {
      participantsStatus.textContent = error.message;
      button.disabled = false;
    }
  }

  async function loadParticipants() {
    const response = await fetch(`/api/rooms/${encodeURIComponent(config.roomId)}/participants`, {
      headers: { Authorization: `Bearer ${config.participantToken}` },
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      participantsStatus.textContent = (answer.error && answer.error.message) || "Could not list participants.";
      return;
    }
    for (const participant of answer.participants) if (participant.kind === "phone") renderPhone(participant);
  }

  session.on("signal:participants", (event) => {
    let payload;
    try { payload = JSON.parse(event.data); } catch (error) { return; }
    if (payload && payload.participant && payload.participant.kind === "phone") {
      note("participantSignal", { callId: payload.participant.call_id, state: payload.participant.state });
      renderPhone(payload.participant);
    }
  });
  session.on("sessionConnected", () => { loadParticipants().catch((error) => { participantsStatus.textContent = error.message; }); });

  const conferenceButton = document.getElementById("dial-conference");
  conferenceButton.addEventListener("click", () => dial({}, conferenceButton));
  document.getElementById("dial-number").addEventListener("submit", (event) => {
    event.preventDefault();
    const number = document.getElementById("number").value.trim();
    dial({ number }, event.submitter || conferenceButton);
  });
})();
