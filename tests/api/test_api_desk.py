"""The desk's API additions of issue 14 that need no chain: ``GET /v1/webhooks`` (the
tenant's endpoints, never their secrets) and a key refused without a policy."""

from __future__ import annotations

from fastapi.testclient import TestClient

from custody.tenancy import owner_of
from tests.api.test_api_tutorial import api, bearer  # noqa: F401  (the app fixture)

DESK = bearer("business")


def test_webhooks_are_listed_per_tenant_without_secrets(api: TestClient) -> None:  # noqa: F811
    mine = [api.post("/v1/webhooks", json={"url": f"https://desk.example/hooks/{i}"},
                     headers=DESK).json() for i in range(2)]
    theirs = api.post("/v1/webhooks", json={"url": "https://other.example/hooks"},
                      headers=bearer("business", tenant="desk-2")).json()
    r = api.get("/v1/webhooks", headers=DESK)
    assert r.status_code == 200, r.text
    listed = r.json()
    assert [e["id"] for e in listed] == [m["id"] for m in mine]
    assert all(set(e) == {"id", "url", "active", "createdAt"} and e["active"] for e in listed)
    assert not any(m["secret"] in r.text for m in mine) and theirs["id"] not in r.text
    assert api.get("/v1/webhooks", headers=bearer("auditor")).status_code == 200
    assert api.get("/v1/webhooks", headers=bearer("key_admin")).status_code == 403
    other = api.get("/v1/webhooks", headers=bearer("business", tenant="desk-2")).json()
    assert [e["id"] for e in other] == [theirs["id"]]


def test_a_key_without_a_policy_is_refused(api: TestClient) -> None:  # noqa: F811
    for body in ({"label": "bare", "algorithm": "ED"},
                 {"label": "bare", "algorithm": "ED", "policy": None},
                 {"label": "bare", "algorithm": "ED", "policy": {}}):
        r = api.post("/v1/key", json=body, headers=bearer("key_admin"))
        assert r.status_code == 400, r.text
        assert "policy" in r.json()["detail"] and "never" in r.json()["detail"]
    assert api.get("/v1/key/bare", headers=bearer("auditor")).status_code == 404
    assert owner_of(api.app.state.broker.sessions, "bare") is None  # type: ignore[attr-defined]
