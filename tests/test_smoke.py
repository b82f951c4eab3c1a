from fastapi.testclient import TestClient


def test_health_reports_database_backend_and_voice_engine(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["backend"] == "embedded"
    # No voice engine runs beside this in-process app: health says so (and where it looked) rather than failing,
    # and calls the whole "degraded", not "ok": phone calls would not be answered.
    assert body["voice_engine"]["status"] == "unreachable"
    assert body["status"] == "degraded"
    assert body["voice_engine"]["url"].startswith("https://127.0.0.1:")
