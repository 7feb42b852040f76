"""The approver web page in a real browser (Debian's Chromium, driven by Playwright).

One server and one enrolled browser for the module: the page enrols (WebCrypto key in
IndexedDB), an administrator confirms it, the key's admins approve the policy change
that adds it to the traders, and then tasks arrive over SSE and are approved, rejected
or - when the broker alters a challenge - refused; the second approver of the medium
transfer is the `custody approver` CLI. Screenshots of each step go to
``tests/artifacts/approver_page/``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from approvals_app.main import create_app
from approvals_app.settings import Settings
from custody.approver_cli import approver_app
from custody.approver_keys import load_key
from custody.broker import REJECT_PREFIX
from hsm_emulator import Hsm
from hsm_emulator.decoders import transfer_payload
from tests.api.test_api_tutorial import SECRET, bearer
from tests.api.test_serve import free_port
from tests.approvers.page_kit import BROWSER_MARKS, CHROMIUM
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

ARTIFACTS = Path(__file__).parents[1] / "artifacts" / "approver_page"
ADMIN = bearer("key_admin", sub="alice-admin")
CLI_PASSPHRASE = "the cli approver's test passphrase"

pytestmark = BROWSER_MARKS

sync_api = pytest.importorskip("playwright.sync_api")


@dataclass
class World:
    base: str
    http: httpx.Client
    hsm_fp: str
    traders: list[Approver]  #: [the `custody approver` CLI's key, a Python approver]
    admins: list[Approver]
    browser: Any
    cli_env: dict[str, str]
    app: Any

    def cli(self, *args: str) -> str:
        """``custody approver ...`` (the other engineer's CLI), against this server."""
        result = CliRunner().invoke(approver_app, [*args, "--server", str(self.http.base_url)],
                                    env=self.cli_env)
        assert result.exit_code == 0, result.output
        return result.output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("approver-page")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    hsm = Hsm.open(tmp / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    port = free_port()
    base = f"http://localhost:{port}"  # a secure context, and a valid WebAuthn RP id
    app = create_app(Settings(database_url=f"sqlite:///{tmp / 'b.sqlite'}", jwt_secret=SECRET,
                              webauthn_rp_id="localhost", webauthn_origins=(base,)), hsm)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    cli_env = {"CUSTODY_APPROVER_KEY": str(tmp / "cli-trader.pem"),
               "CUSTODY_APPROVER_PASSPHRASE": CLI_PASSPHRASE}
    made = CliRunner().invoke(approver_app, ["init", "--type", "p256"], env=cli_env)
    assert made.exit_code == 0, made.output
    cli_key = load_key(tmp / "cli-trader.pem", CLI_PASSPHRASE).private
    traders = [Approver("cli-trader", cli_key), Approver.new("trader-2", "ED25519")]
    admins = [Approver.new("admin-1"), Approver.new("admin-2")]
    policy = {**tiered_policy(traders, [Approver.new("compliance")], admins=admins),
              "assets": [{"asset": "TST", "symbol": "TST", "decimals": 2}]}  # shown units
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http, \
            sync_api.sync_playwright() as pw:
        r = http.post("/v1/key", json={"label": "treasury", "algorithm": "SECP256K1",
                                       "policy": policy}, headers=ADMIN)
        assert r.status_code == 201, r.text
        der = base64.b64decode(http.get("/v1/hsm").json()["identityPublicKey"])
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox"])
        world = World(base, http, hashlib.sha256(der).hexdigest(), traders, admins, browser,
                      cli_env, app)
        world.cli("pin-hsm", "--expect-fingerprint", world.hsm_fp)
        yield world
        browser.close()
    server.should_exit = True
    thread.join(timeout=10)
    hsm.close()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def admit(world: World, name: str, group: str = "traders") -> None:
    """The administrator's side: confirm the pending enrolment, add it to ``group``
    through ruleModify, and have the key's two admins approve that change."""
    http = world.http
    pending = http.get("/v1/enrolments", params={"status": "PENDING"}, headers=ADMIN).json()
    [e] = [x for x in pending["enrolments"] if x["name"] == name]
    r = http.post(f"/v1/enrolment/{e['id']}/confirm", json={"hsmFingerprint": world.hsm_fp},
                  headers=bearer("security_officer"))
    assert r.status_code == 200, r.text
    r = http.post(f"/v1/enrolment/{e['id']}/join", json={"label": "treasury", "group": group},
                  headers=ADMIN)
    assert r.status_code == 201, r.text
    for admin in world.admins:
        status = python_answer(world, admin, r.json()["requestId"])
    assert status == "EXECUTED"


def python_answer(world: World, who: Approver, request_id: str, reject: bool = False) -> str:
    """An approver that is not the browser: lists its tasks with a signed timestamp,
    signs the challenge, posts the approval (as seed 003's scripts do)."""
    ts = dt.datetime.now(dt.UTC).isoformat()
    tasks = world.http.post("/v1/filteredSignApprovalTask", json={
        "timestamp": ts, "timestampSignature": base64.b64encode(who.sign(ts.encode())).decode(),
        "approverCertificate": who.spki_b64}).json()["tasks"]
    [task] = [t for t in tasks if t["id"] == request_id]
    challenge = base64.b64decode(task["approvalToBeSigned"])
    sig = who.sign(REJECT_PREFIX + challenge if reject else challenge)
    r = world.http.post("/v1/rejection" if reject else "/v1/approval", json={
        "id": request_id, "approvalToBeSigned": task["approvalToBeSigned"],
        "signature": base64.b64encode(sig).decode(), "approverCertificate": who.spki_b64})
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


def submit(world: World, amount: int, destination: str = "bob") -> str:
    payload = base64.b64encode(transfer_payload("TST", amount, destination, 7)).decode()
    r = world.http.post("/v1/sign", json={"signRequest": {
        "payload": payload, "payloadType": "TEST_TRANSFER", "signKeyName": "treasury"}},
        headers=bearer("business"))
    assert r.status_code == 201, r.text
    return str(r.json()["signRequestId"])


def request_status(world: World, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = world.http.get(f"/v1/request/{request_id}",
                                          headers=bearer("business")).json()
    return body


@pytest.fixture(scope="module")
def page(world: World) -> Iterator[Any]:
    """A phone-sized page, enrolled, confirmed and made a trader."""
    context = world.browser.new_context(viewport={"width": 390, "height": 844},
                                        device_scale_factor=2, is_mobile=True, has_touch=True)
    p = context.new_page()
    p.goto(f"{world.base}/approver/#hsm={world.hsm_fp}")
    p.wait_for_selector("#enrol:not([hidden])")
    p.fill("#name", "browser-trader")
    shot(p, "01-enrol")
    p.click("#enrol-key")
    p.wait_for_selector("#waiting:not([hidden])")
    assert p.text_content("#hsm-fp") == world.hsm_fp
    shot(p, "02-waiting-for-admin")
    admit(world, "browser-trader")
    p.wait_for_selector("#conn[data-state=on]", timeout=10_000)
    shot(p, "03-enrolled-live")
    yield p
    context.close()


def test_medium_transfer_released_by_browser_and_cli_approver(world: World,
                                                              page: Any) -> None:
    start = time.perf_counter()
    request_id = submit(world, 1000)
    task = page.wait_for_selector(f'li.task[data-id="{request_id}"]', timeout=10_000)
    arrival = time.perf_counter() - start
    assert "10 TST" in task.text_content() and "to bob" in task.text_content()
    shot(page, "04-task-arrived")
    page.click(f'li.task[data-id="{request_id}"]')  # the list re-renders each second
    page.wait_for_selector("#detail:not([hidden])")
    detail = page.text_content("#detail-body")
    assert "Verified: signed by your HSM" in detail
    for expected in ("10 TST", "0.07 TST", "bob", "medium", "nobody yet", "treasury-app"):
        assert expected in detail, (expected, detail)
    shot(page, "05-task-detail")
    page.click("#approve")
    page.wait_for_selector("#confirm:not([hidden])")
    summary = page.text_content("#confirm")
    assert "Approve this transfer?" in summary and "10 TST" in summary and "bob" in summary
    shot(page, "05b-confirm-approve")
    page.click("#confirm-yes")
    page.wait_for_selector("#outcome:not([hidden])")
    assert page.text_content("#outcome") == "Approved: request is PENDING"
    shot(page, "06-approved")
    out = world.cli("approve", request_id, "--yes")  # the second approver: the CLI
    assert f"approved {request_id}: request is now EXECUTED" in " ".join(out.split())
    body = request_status(world, request_id)
    assert body["status"] == "EXECUTED" and len(body["approvedBy"]) == 2
    page.click("#back")
    page.wait_for_selector(f'li.task[data-id="{request_id}"]', state="detached")
    shot(page, "07-released")
    assert arrival < 3.0, f"task arrived over SSE after {arrival:.2f} s"


def test_reject(world: World, page: Any) -> None:
    """A rejection asks too, and looks like one: red, in its own words, not the green of
    an approval."""
    request_id = submit(world, 2000)
    page.click(f'li.task[data-id="{request_id}"]', timeout=10_000)
    page.click("#reject")
    page.wait_for_selector("#confirm.reject:not([hidden])")
    assert page.text_content("#confirm-title") == "Reject this transfer?"
    assert page.text_content("#confirm-yes") == "Sign the rejection"
    assert "20 TST" in page.text_content("#confirm-body")
    red = page.evaluate("getComputedStyle(document.getElementById('confirm-yes'))"
                        ".backgroundColor")
    assert red == "rgb(179, 38, 30)", red  # --bad
    shot(page, "08a-confirm-reject")
    page.click("#confirm-yes")
    page.wait_for_selector("#outcome:not([hidden])")
    assert page.text_content("#outcome").startswith("Rejected")
    assert page.get_attribute("#outcome", "class") == "rejected"
    colour = page.evaluate("getComputedStyle(document.getElementById('outcome')).color")
    assert colour == "rgb(179, 38, 30)", colour
    shot(page, "08-rejected")
    body = request_status(world, request_id)
    assert len(body["rejectedBy"]) == 1 and body["approvedBy"] == []
    page.click("#back")


#: A Bitcoin P2WSH address: 62 characters, wider than a 390 px phone in any font.
LONG_DESTINATION = "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3"


def no_sideways_scroll(page: Any) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth,"
                          " document.documentElement.clientWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways: {width}"


def address_in_full(page: Any, selector: str) -> None:
    """The address element's text is the whole destination, it does not overflow, and
    every group of it lies inside the 390 px viewport."""
    node = page.locator(selector)
    assert node.text_content() == LONG_DESTINATION
    fits = node.evaluate("e => e.scrollWidth <= e.clientWidth || e.clientWidth === 0")
    assert fits, "the address overflows its box"
    boxes = node.evaluate("e => [...e.children].map(c => c.getBoundingClientRect())"
                          ".map(r => [r.left, r.right])")
    assert boxes and all(left >= 0 and right <= 390 for left, right in boxes), boxes
    assert "".join(node.evaluate("e => [...e.children].map(c => c.textContent)")) \
        == LONG_DESTINATION


def dd(page: Any, label: str, within: str = "#detail-body") -> str:
    """The value beside ``label`` in a definition list."""
    text: str = page.locator(f"{within} dt:text-is('{label}') + dd").first.text_content()
    return text


def test_phone_shows_a_long_destination_the_own_tier_and_asks_before_signing(
        world: World, page: Any) -> None:
    """One trader (Python) has approved a medium transfer to a long address; the phone
    shows the address whole, the fee with its unit, the tier in words and the medium
    token's hour (not the large tier's three days), and signs only after the confirm."""
    request_id = submit(world, 1200, LONG_DESTINATION)
    assert python_answer(world, world.traders[1], request_id) == "PENDING"
    page.reload()  # a PENDING -> PENDING approval is no event: the approver opens the page
    item = f'li.task[data-id="{request_id}"]'
    page.wait_for_selector(item, timeout=10_000)
    address_in_full(page, f"{item} .addr")
    assert "59 min" in page.text_content(f"{item} .hint")
    no_sideways_scroll(page)
    shot(page, "11-long-destination-list")

    page.click(item)
    page.wait_for_selector("#detail:not([hidden])")
    address_in_full(page, "#detail-body dt:text-is('To') + dd .addr")
    assert "12 TST" in dd(page, "Amount")
    assert dd(page, "Fee (most)") == "0.07 TST", dd(page, "Fee (most)")
    sync_api.expect(page.locator("#tier")).to_have_text("medium: 2 traders, 1 more needed")
    assert dd(page, "Fallback").startswith("large: 2 traders, 1 more needed; 1 compliance")
    assert dd(page, "Approved by") == "trader-2"
    left = dd(page, "Time left")  # the medium token's hour, not the large one's 3 days
    assert re.fullmatch(r"(59|60) min \d+ s", left), left
    no_sideways_scroll(page)
    shot(page, "12-long-destination-detail")

    signed: list[str] = []

    def record(r: Any) -> None:
        if "/v1/approval" in r.url:
            signed.append(r.url)

    page.on("request", record)
    page.click("#approve")
    page.wait_for_selector("#confirm:not([hidden])")
    assert page.is_hidden("#detail-actions")
    address_in_full(page, "#confirm-body .addr")
    assert "12 TST" in dd(page, "Amount", "#confirm-body")
    assert "TST" in dd(page, "Fee (most)", "#confirm-body")
    no_sideways_scroll(page)
    shot(page, "13-confirm-approve")
    page.click("#confirm-no")  # cancelling signs nothing and goes back to the detail
    assert page.is_hidden("#confirm") and page.is_visible("#approve")
    page.wait_for_timeout(300)
    assert signed == [] and page.is_hidden("#outcome")
    assert request_status(world, request_id)["approvedBy"] == [world.traders[1].spki_b64]

    page.click("#approve")
    page.click("#confirm-yes")
    page.wait_for_selector("#outcome:not([hidden])")
    assert page.text_content("#outcome") == "Approved: request is EXECUTED"
    assert len(signed) == 1
    page.remove_listener("request", record)
    shot(page, "14-long-destination-approved")
    page.click("#back")


def test_the_outcome_stays_when_the_list_refreshes_while_the_answer_is_in_flight(
        world: World, page: Any) -> None:
    """The approval that completes a quorum executes the request, and the broker's event
    makes the page refresh its list - possibly before the approval's own answer arrives
    (a loaded phone or network). That refresh no longer holds the task; it must not close
    the detail the outcome is about to be shown in (it did: the approver saw the list and
    no outcome). The answer is held back here until the refresh has happened."""
    request_id = submit(world, 1200)
    assert python_answer(world, world.traders[1], request_id) == "PENDING"
    page.reload()
    item = f'li.task[data-id="{request_id}"]'
    page.wait_for_selector(item, timeout=10_000)
    page.click(item)
    page.wait_for_selector("#detail:not([hidden])")

    def late(route: Any) -> None:
        answer = route.fetch()  # the server executes the request and emits its event
        deadline = time.monotonic() + 10
        while (request_status(world, request_id)["status"] != "EXECUTED"
               and time.monotonic() < deadline):
            time.sleep(0.05)
        time.sleep(1.5)  # the page's event-driven refresh lands meanwhile
        route.fulfill(response=answer)

    page.route("**/v1/approval", late)
    try:
        page.click("#approve")
        page.click("#confirm-yes")
        page.wait_for_selector("#outcome:not([hidden])", state="visible", timeout=15_000)
        assert page.text_content("#outcome") == "Approved: request is EXECUTED"
        assert page.is_visible("#detail")
    finally:
        page.unroute("**/v1/approval")
    page.click("#back")


def test_a_challenge_altered_by_the_broker_is_refused(world: World, page: Any) -> None:
    def tamper(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        for t in body["tasks"]:
            raw = base64.b64decode(t["approvalToBeSigned"])
            t["approvalToBeSigned"] = base64.b64encode(
                raw.replace(b'"destination":"bob"', b'"destination":"eve"')).decode()
        route.fulfill(response=response, json=body)

    page.route("**/approver/api/tasks", tamper)
    try:
        request_id = submit(world, 3000)
        bad = page.wait_for_selector(f'li.task.bad[data-id="{request_id}"]', timeout=10_000)
        assert "not signed by your HSM" in bad.text_content()
        assert "altered" in bad.text_content()
        page.click(f'li.task.bad[data-id="{request_id}"]')  # cannot be opened: nothing signed
        assert page.is_hidden("#detail")
        shot(page, "09-tampered-refused")
        assert request_status(world, request_id)["approvedBy"] == []
    finally:
        page.unroute("**/approver/api/tasks")


def test_a_passkey_approver_end_to_end(world: World) -> None:
    """Chromium's virtual authenticator (CDP WebAuthn domain) plays the phone's passkey."""
    context = world.browser.new_context(viewport={"width": 390, "height": 844})
    p = context.new_page()
    cdp = context.new_cdp_session(p)
    cdp.send("WebAuthn.enable")
    cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True}})
    try:
        p.goto(f"{world.base}/approver/")
        p.fill("#name", "passkey-trader")
        p.click("#enrol-passkey")
        p.wait_for_selector("#waiting:not([hidden])")
        admit(world, "passkey-trader")
        p.wait_for_selector("#conn[data-state=on]", timeout=10_000)
        request_id = submit(world, 1500)
        p.click(f'li.task[data-id="{request_id}"]', timeout=10_000)
        p.click("#approve")
        p.click("#confirm-yes")
        p.wait_for_selector("#outcome:not([hidden])")
        assert p.text_content("#outcome") == "Approved: request is PENDING"
        shot(p, "10-passkey-approved")
        assert python_answer(world, world.traders[1], request_id) == "EXECUTED"
    finally:
        context.close()


def test_an_enrolment_link_pins_the_hsm_key(world: World) -> None:
    """A server that shows another HSM key than the link names gets no enrolment."""
    context = world.browser.new_context()
    p = context.new_page()
    try:
        p.goto(f"{world.base}/approver/#hsm={'0' * 64}")
        p.fill("#name", "phished")
        p.click("#enrol-key")
        p.wait_for_selector("#error:not([hidden])")
        assert "not the one in your enrolment link" in p.text_content("#error")
        assert p.is_hidden("#waiting")
        pending = world.http.get("/v1/enrolments", headers=ADMIN).json()["enrolments"]
        assert "phished" not in [e["name"] for e in pending]
    finally:
        context.close()


def test_a_head_replayed_by_the_broker_is_refused(world: World, page: Any) -> None:
    """The page remembers the highest audit head it verified (localStorage, per HSM key):
    a broker that replays an earlier head the HSM signed - captured from its own task
    list - gets every task withdrawn and the reason shown; nothing can be signed. The
    live head again, and the tasks are back."""
    heads: list[dict[str, Any]] = []
    broker = {"replay": None}  # the head the broker serves instead of the HSM's, if any

    def compromised(route: Any) -> None:  # one handler throughout: none left hanging
        response = route.fetch()
        body = response.json()
        heads.append(body["auditHead"])
        if broker["replay"] is not None:
            body["auditHead"] = broker["replay"]
        route.fulfill(response=response, json=body)

    page.route("**/approver/api/tasks", compromised)
    try:
        early = submit(world, 1100, "carol")
        page.wait_for_selector(f'li.task[data-id="{early}"]', timeout=10_000)
        captured = heads[-1]
        later = submit(world, 1200, "dave")  # the HSM's log moves on; the page sees that
        page.wait_for_selector(f'li.task[data-id="{later}"]', timeout=10_000)
        seen = page.evaluate("JSON.parse(localStorage.getItem('ska-witness-v1'))")
        highest = seen[world.hsm_fp]["head"]["seq"]
        assert highest > captured["seq"]

        broker["replay"] = captured
        attack = submit(world, 1300, "mallory")  # its SSE event makes the page list again
        page.wait_for_selector("#error:not([hidden])", timeout=10_000)
        error = page.text_content("#error")
        assert error == (f"Refused: the HSM's audit head went back from seq {highest} to "
                         f"{captured['seq']}: the HSM's state may have been rewound; do not "
                         "approve"), error
        assert page.query_selector_all("li.task") == []  # withdrawn: nothing to open
        shot(page, "15-rewound-head-refused")
        assert request_status(world, attack)["approvedBy"] == []
        kept = page.evaluate("JSON.parse(localStorage.getItem('ska-witness-v1'))")
        assert kept[world.hsm_fp]["head"]["seq"] >= highest  # the replay was not remembered

        broker["replay"] = None  # the live head again
        fresh = submit(world, 1400, "erin")  # an event: the page lists again
        page.wait_for_selector(f'li.task[data-id="{attack}"]', timeout=10_000)
        page.wait_for_selector(f'li.task[data-id="{fresh}"]', timeout=10_000)
        assert page.is_hidden("#error")
        for request_id in (early, later, attack, fresh):  # leave no open task behind
            python_answer(world, world.traders[1], request_id, reject=True)
    finally:
        page.unroute("**/approver/api/tasks")


def test_a_transfer_signed_again_says_so(world: World, page: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A transfer whose signed transaction expired unlanded asks for approval again under
    a new request: the list and the detail say it is signed again and which transaction
    died, so the approver is not left looking at what seems the same transfer twice.
    (The broker's record of the transfer is stood in for here; the re-sign itself is
    driven on the Solana node in tests/reliability/test_solana_resign.py.)"""
    request_id = submit(world, 1250, "frank")
    dead = "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi" + "x" * 44
    monkeypatch.setattr(world.app.state.treasury.ledger, "earlier_attempts",
                        lambda ids: {request_id: [{"txid": dead, "reason": "blockhash "
                                                   "expired at height 9,210 before it "
                                                   "landed"}]} if request_id in ids else {})
    page.reload()
    item = f'li.task[data-id="{request_id}"]'
    page.wait_for_selector(item, timeout=10_000)
    assert page.text_content(f"{item} .hint").endswith(" · signed again")
    page.click(item)
    page.wait_for_selector("#detail:not([hidden])")
    shown = dd(page, "Signed again")
    assert shown == ("attempt 2: the earlier transaction expired without landing, so "
                     f"nothing moved by it: {dead[:12]}… (blockhash expired at height 9,210 "
                     "before it landed)"), shown
    no_sideways_scroll(page)
    shot(page, "16-signed-again")
    page.click("#back")
    python_answer(world, world.traders[1], request_id, reject=True)  # leave none open
