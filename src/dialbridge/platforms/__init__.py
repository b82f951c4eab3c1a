"""Video platforms a room can run on: dialbridge's own (embedded) or Vonage Video."""
