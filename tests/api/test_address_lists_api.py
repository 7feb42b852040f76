"""``/v1/address-lists`` and ``custody list upload``: a large allowlist enters the HSM in
chunks through the API and a policy or tier configuration names it by digest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from fastapi.testclient import TestClient

from approvals_app.auth import FailureLimiter, issue_token
from approvals_app.main import create_app
from approvals_app.settings import Settings
from custody.cli import list_upload
from custody.errors import BadRequest
from custody.treasury.policy import AssetInfo, treasury_policy
from hsm_emulator import Hsm
from hsm_emulator.address_lists import list_digest
from hsm_emulator.policy import parse_policy
from tests.api.test_api_tutorial import SECRET
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver

ADMIN = {"Authorization": "Bearer " + issue_token(SECRET, "admin", "desk-1", ["key_admin"])}
AUDITOR = {"Authorization": "Bearer " + issue_token(SECRET, "aud", "desk-1", ["auditor"])}
ADDRESSES = [f"0x{i:040x}" for i in range(12_000)]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'broker.sqlite'}",
                        jwt_secret=SECRET)
    app = create_app(settings, hsm, scheduler=False)
    app.state.limiter = FailureLimiter(limit=10**9)
    with TestClient(app) as client:
        yield client
    hsm.close()


def _policy(dests: Any) -> dict[str, Any]:
    auto = {"name": "auto", "timelock": 0, "timeout": 0, "groups": [], "conditions": {
        "amounts": [{"asset": "TST", "max": 100}], "maxFee": [{"asset": "TST", "max": 1}],
        "destinations": dests}}
    return {"ruleUse": {"tokens": [auto]}}


def _upload(api: TestClient, addresses: list[str]) -> dict[str, Any]:
    r = api.post("/v1/address-lists", headers=ADMIN)
    assert r.status_code == 201, r.text
    upload = r.json()["uploadId"]
    for i in range(0, len(addresses), 5000):
        r = api.put(f"/v1/address-lists/{upload}/chunks/{i // 5000}", headers=ADMIN,
                    json={"addresses": addresses[i:i + 5000]})
        assert r.status_code == 200, r.text
    r = api.post(f"/v1/address-lists/{upload}/finish", headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_upload_in_chunks_then_a_key_names_the_list(api: TestClient) -> None:
    done = _upload(api, ADDRESSES)
    assert done["digest"] == list_digest(ADDRESSES) and done["size"] == len(ADDRESSES)
    assert done["finished"] and done["chunks"] == 3
    r = api.get(f"/v1/address-lists/{done['digest']}", headers=AUDITOR)
    assert r.status_code == 200 and r.json() == done
    r = api.post("/v1/key", headers=ADMIN, json={
        "label": "listed", "algorithm": "EC", "curveOid": "1.3.132.0.10",
        "policy": _policy({"list": done["digest"]})})
    assert r.status_code == 201, r.text
    r = api.post("/v1/key", headers=ADMIN, json={
        "label": "unheld", "algorithm": "EC", "curveOid": "1.3.132.0.10",
        "policy": _policy({"list": list_digest(["not", "uploaded"])})})
    assert r.status_code == 400 and "no finished address list" in r.text


def test_hostile_chunks_are_refused(api: TestClient) -> None:
    upload = api.post("/v1/address-lists", headers=ADMIN).json()["uploadId"]
    base = f"/v1/address-lists/{upload}/chunks"
    assert api.put(f"{base}/0", headers=ADMIN, json={"addresses": ["a b"]}).status_code == 400
    assert api.put(f"{base}/1", headers=ADMIN, json={"addresses": ["a"]}).status_code == 400
    assert api.put(f"{base}/0", headers=ADMIN,
                   json={"addresses": ["a"] * 5001}).status_code == 422
    assert api.put(f"{base}/0", headers=ADMIN,
                   json={"addresses": ["a"], "extra": 1}).status_code == 422
    assert api.put(f"/v1/address-lists/{'0' * 32}/chunks/0", headers=ADMIN,
                   json={"addresses": ["a"]}).status_code == 400
    assert api.put(f"{base}/0", headers=AUDITOR, json={"addresses": ["a"]}).status_code == 403
    assert api.get(f"/v1/address-lists/{upload}", headers=ADMIN).json()["size"] == 0
    gone = api.delete(f"/v1/address-lists/{upload}", headers=ADMIN)
    assert gone.status_code == 200 and gone.json()["discarded"] is True
    assert gone.json()["uploadId"] == upload and gone.json()["finished"] is False
    assert api.get(f"/v1/address-lists/{upload}", headers=ADMIN).status_code == 400


def test_the_tier_configuration_binds_the_allowlist_to_the_tiers_it_names() -> None:
    digest = list_digest(ADDRESSES)
    config = {"traders": [Approver.new("t1").entry()], "compliance": [
        Approver.new("c1").entry()], "tradersQuorum": 1, "allowlist": digest,
        "allowlistTiers": ["small"], "tiers": {"BTC": {"small": "1", "medium": "5"}}}
    doc = treasury_policy(config, [AssetInfo("BTC", "BTC", 8)], network="bitcoin:regtest")
    tokens = {t["name"]: t["conditions"] for t in doc["ruleUse"]["tokens"]}
    assert tokens["small-BTC"]["destinations"] == {"list": digest}
    assert "destinations" not in tokens["medium-BTC"]
    assert "destinations" not in tokens["large-BTC"]
    assert parse_policy(doc).rules[0][1].tokens[0].conditions.destinations_list == digest
    for bad in ({"allowlist": "AB" * 32}, {"allowlistTiers": ["small"]},
                {"allowlist": digest, "allowlistTiers": ["tiny"]}):
        wrong = {k: v for k, v in config.items() if k not in ("allowlist", "allowlistTiers")}
        with pytest.raises(BadRequest, match="allowlist"):
            treasury_policy({**wrong, **bad}, [AssetInfo("BTC", "BTC", 8)])


def test_cli_upload_checks_the_hsms_digest_against_the_file(
        api: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Same:
        """The app's test client behind ``httpx.Client(...)`` as the command opens it."""

        def __init__(self, **kw: Any) -> None:
            self.base_url, self.headers = kw["base_url"], kw["headers"]

        def __enter__(self) -> Same:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def request(self, method: str, path: str, json: Any = None) -> httpx.Response:
            return api.request(method, path, json=json, headers=self.headers)

    monkeypatch.setattr(list_upload.httpx, "Client", Same)
    file = tmp_path / "list.txt"
    file.write_text("# desk allowlist\n" + "\n".join(reversed(ADDRESSES)) + "\n\n0xABC\n")
    token = ADMIN["Authorization"].removeprefix("Bearer ")
    digest = list_upload.upload_file("http://testserver", token, file, 5000)
    assert digest == list_digest([*ADDRESSES, "0xabc"])
    file.write_text("fine\nnot fine\n")
    with pytest.raises(typer.Exit) as exit_:
        list_upload.upload_file("http://testserver", token, file, 5000)
    assert exit_.value.exit_code == 2


def test_cli_chunks_stay_under_the_body_limit_whatever_the_address_length() -> None:
    long = [f"{i:0256d}" for i in range(5000)]
    parts = list_upload.chunks(long)
    assert [a for p in parts for a in p] == long and len(parts) > 1
    assert all(len(json.dumps({"addresses": p})) < 1024 * 1024 for p in parts)
    assert [len(p) for p in list_upload.chunks(ADDRESSES)] == [5000, 5000, 2000]
