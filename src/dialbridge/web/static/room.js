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

  const conferenceButton = document.getElementById("dial-conference");
  conferenceButton.addEventListener("click", () => dial({}, conferenceButton));
  document.getElementById("dial-number").addEventListener("submit", (event) => {
    event.preventDefault();
    const number = document.getElementById("number").value.trim();
    dial({ number }, event.submitter || conferenceButton);
  });
})();
