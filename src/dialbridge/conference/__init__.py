"""The conference domain: rooms, PINs and the call flow. Pure code: no I/O, no clock of its own."""
