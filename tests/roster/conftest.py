"""The Vonage backend's fixtures (a TLS stub of Vonage's REST API, an app on it), shared with test_vonage_backend.py."""

from tests.test_vonage_backend import app_settings, ca, legacy, private_key, stub, vonage  # noqa: F401
