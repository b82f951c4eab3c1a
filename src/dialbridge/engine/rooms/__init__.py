"""Embedded video rooms: WebSocket signalling between browsers that exchange media peer-to-peer."""
