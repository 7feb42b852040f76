"""The wire shapes the response models must keep: a task's fields by ``detailLevel``
(absent beyond the level, never null), a request's fields, and an OpenAPI spec that
documents every success answer (a schema per JSON route, the media type of streams)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from approvals_app.main import create_app
from approvals_app.settings import Settings
from hsm_emulator import Hsm
from tests.api.test_api_flows import sign, tasks
from tests.api.test_api_tutorial import SECRET, bearer
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

LEVEL1 = {"detailLevel", "id", "approvalToBeSigned"}
LEVEL2 = LEVEL1 | {"keyLabel", "action", "payloadType", "intent", "status"}
LEVEL3 = LEVEL2 | {"payload", "metaData", "initiator"}
REQUEST = {"id", "status", "executionTime", "approvedBy", "notYetApprovedBy", "rejectedBy",
           "result", "signatures", "keyLabel", "action", "payloadType", "intent", "metaData",
           "error"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'b.sqlite'}", jwt_secret=SECRET)
    with TestClient(create_app(settings, hsm, scheduler=False)) as client:
        yield client
    hsm.close()


def test_task_fields_by_level_and_request_fields(api: TestClient) -> None:
    people = [Approver.new(f"p{i}") for i in range(3)]
    r = api.post("/v1/key", json={"label": "treasury", "algorithm": "EC",
                                  "curveOid": "1.3.132.0.10",
                                  "policy": tiered_policy(people[:2], people[2:])},
                 headers=bearer("key_admin"))
    assert r.status_code == 201, r.text
    assert set(r.json()) >= {"label", "keyStatus", "attestation"} and (
        r.json()["attestation"] is None)
    request = sign(api, 1000)
    assert set(request) == REQUEST and request["status"] == "PENDING"
    assert request["executionTime"] is None and request["result"] is None
    for level, fields in (("level1", LEVEL1), ("level2", LEVEL2), ("level3", LEVEL3)):
        found = tasks(api, people[0], level)
        assert [set(t) for t in found] == [fields], level
    assert tasks(api, people[0], "level3")[0]["metaData"] is None  # null, yet present


def test_every_success_is_documented(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    undocumented = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            ok = {c: r for c, r in op["responses"].items() if c.startswith("2")}
            content = {media: body.get("schema") for r in ok.values()
                       for media, body in r.get("content", {}).items()}
            json_schema = content.get("application/json")
            streams = {"text/event-stream", "text/plain"} & set(content)
            if not streams and not (json_schema and ("$ref" in json_schema or "items" in json_schema)):
                undocumented.append(f"{method.upper()} {path}")
    assert undocumented == []
    events = spec["paths"]["/v1/approver/events"]["get"]["responses"]["200"]["content"]
    assert set(events) == {"text/event-stream"}
