// The benchmark's reference point: the tutorial's approach at its plainest. Express, rooms in an in-memory Map
// keyed by PIN, no signature check, no database. Usage: node server.js PORT PINS_FILE (one "pin session" a line).
"use strict";
const fs = require("fs");
const express = require("express");

const [port, pinsFile] = process.argv.slice(2);
const sessionsByPin = new Map();
for (const line of fs.readFileSync(pinsFile, "utf8").split("\n")) {
  const [pin, session] = line.split(" ");
  if (pin) sessionsByPin.set(pin, session);
}

const app = express();
app.use(express.json());
const ask = {
  action: "input",
  type: ["dtmf"],
  dtmf: { maxDigits: 8, timeOut: 5, submitOnHash: true },
  eventUrl: ["https://dialbridge.example.test/webhooks/input"],
};
app.get("/webhooks/answer", (req, res) => {
  res.json([{ action: "talk", text: "Please enter the PIN of your meeting, followed by the hash key.", bargeIn: true }, ask]);
});
app.post("/webhooks/input", (req, res) => {
  const digits = req.body && req.body.dtmf && req.body.dtmf.digits;
  const session = sessionsByPin.get(digits);
  if (session) {
    res.json([{ action: "talk", text: "Joining the meeting." }, { action: "conversation", name: session }]);
  } else {
    res.json([{ action: "talk", text: "That PIN was not recognised." }, ask]);
  }
});
// The tutorial logged each event and answered 200; here, as dialbridge answers, 204.
app.post("/webhooks/events", (req, res) => res.status(204).end());
app.get("/healthz", (req, res) => res.json({ status: "ok" }));
app.listen(Number(port), "127.0.0.1");
