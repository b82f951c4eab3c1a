from fastapi.testclient import TestClient


def test_health_reports_database_backend_and_voice_engine(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["backend"] == "embedded"
    # No voice engine runs beside this in-process app: health says so (and where it looked) rather than failing.
    assert body["voice_engine"]["status"] == "unreachable"
    assert body["voice_engine"]["url"].startswith("https://127.0.0.1:")
