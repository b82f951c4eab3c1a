"""The server process around the application: its HTTP protocol, its worker pool and the voice engine's process
beside it (`web/` is the application)."""
