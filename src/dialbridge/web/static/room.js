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
})();
