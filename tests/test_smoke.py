from fastapi.testclient import TestClient


def test_health_reports_database_and_backend(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "backend": "embedded"}
