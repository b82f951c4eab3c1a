"""The server process around the application: its HTTP protocol and its worker pool (`web/` is the application)."""
