"""The embedded engine: what runs calls and rooms on this machine when no Vonage account is used."""
