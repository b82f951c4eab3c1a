"""The WebRTC-SIP gateway: puts a SIP call into an embedded video room as one participant, as Vonage Video's SIP
Interconnect does.

On one side it is a participant of a room (`room.py`: the room's signalling WebSocket with a token, exactly as a
browser joins, and WebRTC audio with the browsers through aiortc); on the other a SIP user agent client (the shared
sans-I/O `dialbridge.sip` agent, G.711 over RTP). It never imports the voice engine or the call flow: it calls the
engine's dial-in as any phone would, with the `X-OpenTok-SessionId` header that routes the call into the room's
conversation, and the engine and the call flow do not know a gateway exists.

Its control API is Vonage Video's own SIP dial (`control.py`), so the app's embedded video platform dials exactly
as its Vonage one does; and it tells the app how each call goes as Vonage Video does, with session-monitoring
callbacks (`events.py`). It calls over UDP, or TCP where the URI says `;transport=tcp` (`tcp.py`).
"""
