"""dialbridge: browser video rooms that phone callers can join."""

__version__ = "0.1.0"
