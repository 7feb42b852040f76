// The approver page: enrol, list tasks live, verify each challenge, approve or reject.
// Untrusted text (everything from the server) only ever goes into textContent.
import {
  b64, concat, createPasskey, ENROL_PREFIX, forgetDevice, formatAmount, importHsmKey,
  loadDevice, newDeviceKey, REJECT_PREFIX, saveDevice, sha256hex, signer, verifyChallenge,
  verifyHead,
} from "./crypto.js";
import { address, el, ownToken, policyDiff, tierWords, timeLeft } from "./view.js";
import { observe } from "./witness.js";

const $ = (id) => document.getElementById(id);
//: `shown`: the task as the detail shows it - what the confirm restates and what is signed,
//: even if a refresh brings a newer copy meanwhile.
const state = { device: null, hsmKey: null, sign: null, tasks: new Map(), open: null,
  shown: null, events: null, refreshing: false, again: false, answering: false,
  refused: false };

function show(...ids) {
  for (const s of ["enrol", "waiting", "tasks", "detail"]) $(s).hidden = !ids.includes(s);
}
function fail(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}
function notice(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
}
async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.detail || `${path}: HTTP ${r.status}`);
  return data;
}

// -- enrolment ----------------------------------------------------------------------

async function pinHsm() {
  const { identityPublicKey } = await api("/v1/hsm");
  const fp = await sha256hex(Uint8Array.from(atob(identityPublicKey), (c) => c.charCodeAt(0)));
  const expected = new URLSearchParams(location.hash.slice(1)).get("hsm");
  if (expected && expected.toLowerCase() !== fp) {
    throw new Error("the server's HSM key is not the one in your enrolment link: stop");
  }
  return { hsmKeyB64: identityPublicKey, hsmFingerprint: fp };
}

function enteredName() {
  const name = $("name").value.trim();
  if (!/^[A-Za-z0-9 ._@-]{1,64}$/.test(name)) throw new Error("name: letters, digits, ._@-");
  return name;
}

async function enrolKey() {
  const name = enteredName();
  const hsm = await pinHsm();
  const key = await newDeviceKey();
  const message = new TextEncoder().encode(
    `${ENROL_PREFIX}${name}\n${key.publicKey}\n${hsm.hsmFingerprint}`);
  const proof = await signer({ privateKey: key.privateKey })(message);
  const e = await api("/v1/enrolment", { name, publicKey: key.publicKey,
    hsmFingerprint: hsm.hsmFingerprint, proof: b64(proof) });
  return { kind: "key", name, ...hsm, ...key, enrolmentId: e.id, fingerprint: e.fingerprint,
    credential: key.publicKey };
}

async function enrolPasskey() {
  const name = enteredName();
  const hsm = await pinHsm();
  const start = await api("/v1/enrolment/passkey", { name, hsmFingerprint: hsm.hsmFingerprint });
  const made = await createPasskey(start.options);
  const e = await api(`/v1/enrolment/${start.id}/passkey`, { credential: made.credential });
  return { kind: "passkey", name, ...hsm, rpId: made.rpId, enrolmentId: e.id,
    credentialId: made.credential.id, fingerprint: e.fingerprint, credential: null };
}

async function enrol(how) {
  fail("");
  for (const b of document.querySelectorAll("#enrol button")) b.disabled = true;
  try {
    state.device = await how();
    await saveDevice(state.device);
    await start();
  } catch (e) {
    fail(`Enrolment failed: ${e.message}`);
  } finally {
    for (const b of document.querySelectorAll("#enrol button")) b.disabled = false;
  }
}

async function waitForConfirmation() {
  const d = state.device;
  show("waiting");
  $("enrolment-id").textContent = d.enrolmentId;
  $("my-fp").textContent = d.fingerprint;
  $("hsm-fp").textContent = d.hsmFingerprint;
  for (;;) {
    const e = await api(`/v1/enrolment/${d.enrolmentId}`);
    if (e.status === "CONFIRMED") {
      if (e.hsmFingerprint !== d.hsmFingerprint) throw new Error("enrolment changed");
      d.credential = d.credential || e.credential;
      d.confirmed = true;
      await saveDevice(d);
      return;
    }
    if (e.status === "REFUSED") throw new Error("an administrator refused this enrolment");
    await new Promise((r) => setTimeout(r, 1500));
  }
}

// -- tasks ----------------------------------------------------------------------------

async function proof() {
  const timestamp = new Date().toISOString();
  const sig = await state.sign(new TextEncoder().encode(timestamp));
  return { timestamp, timestampSignature: b64(sig),
    approverCertificate: state.device.credential };
}

function listen() {
  if (state.events) state.events.close();
  proof().then((p) => {
    const q = new URLSearchParams({ timestamp: p.timestamp, signature: p.timestampSignature,
      certificate: p.approverCertificate });
    const es = new EventSource(`/approver/api/events?${q}`);
    state.events = es;
    es.addEventListener("hello", () => { connected(true); refresh(); });
    es.addEventListener("task", () => refresh());
    es.onerror = () => {  // each signed timestamp works once: reconnect with a new one
      es.close();
      connected(false);
      setTimeout(listen, 3000);
    };
  }).catch((e) => fail(`Cannot sign in: ${e.message}`));
}

function connected(on) {
  $("conn").dataset.state = on ? "on" : "off";
  $("conn").textContent = on ? "live" : "offline";
}

async function refresh() {
  if (state.refreshing) { state.again = true; return; }
  state.refreshing = true;
  try {
    do {
      state.again = false;
      const { tasks, auditHead } = await api("/approver/api/tasks", await proof());
      const next = new Map();
      const epochs = {};
      for (const t of tasks) {
        try {
          const { bytes, body, epoch } = await verifyChallenge(state.hsmKey,
            t.approvalToBeSigned, t.id);
          next.set(t.id, { ...t, bytes, body, error: null });
          epochs[t.id] = epoch;
        } catch (e) {
          next.set(t.id, { ...t, bytes: null, body: null, error: e.message });
        }
      }
      let seen;
      try {  // the witness: the HSM's signed head (and epoch) must never go back
        seen = observe(state.device.hsmFingerprint, await verifyHead(state.hsmKey, auditHead),
          epochs);
      } catch (e) {
        refuseAll(e.message);
        return;
      }
      for (const [id, why] of Object.entries(seen.refused)) {
        next.set(id, { ...next.get(id), bytes: null, body: null, error: why, void: true });
        if (state.open === id) closeTask();  // void now: its detail cannot be answered
      }
      if (seen.notes.length) notice(seen.notes.join(" "));
      if (state.refused) { fail(""); state.refused = false; }
      state.tasks = next;
      renderList();
    } while (state.again);
  } catch (e) {
    fail(`Cannot list tasks: ${e.message}`);
  } finally {
    state.refreshing = false;
  }
}

// The HSM's state went back (or its head cannot be checked): no task of this listing or
// any earlier one may be answered, and the page says why.
function refuseAll(message) {
  state.tasks = new Map();
  if (state.open) closeTask();
  renderList();
  state.refused = true;
  fail(`Refused: ${message}`);
}

// Units come from the HSM-signed challenge (body.units, from the key's policy), never
// from the broker; a version 1 challenge has none: base units with the asset id.
function amount(value, asset, body) {
  return formatAmount(value, asset, body && body.units);
}

function headline(t) {
  const tr = t.body && t.body.intent && t.body.intent.transfers;
  if (tr && tr.length) return tr.map((x) => amount(x.amount, x.asset, t.body)).join(" + ");
  return t.body ? `${t.body.action} ${t.body.keyLabel}` : "unverified task";
}

function renderList() {
  const list = $("task-list");
  list.replaceChildren();
  $("count").textContent = String(state.tasks.size);
  $("empty").hidden = state.tasks.size > 0;
  for (const t of state.tasks.values()) {
    const li = el("li", undefined, t.error ? "task bad" : "task");
    li.dataset.id = t.id;
    if (t.error) {
      li.append(el("div", t.void ? "Refused: this challenge is from before the HSM's restore"
        : "Refused: this challenge was not signed by your HSM", "amount"),
        el("div", t.error), el("div", `request ${t.id}`, "hint"));
    } else {
      const tr = (t.body.intent && t.body.intent.transfers) || [];
      const to = el("div", tr.length ? "to " : t.body.payloadType, "to");
      tr.forEach((x, i) => to.append(...(i ? [", "] : []), address(x.destination)));
      const again = (t.earlierAttempts || []).length ? " · signed again" : "";
      li.append(el("div", headline(t), "amount"), to,
        el("div", `${t.body.keyLabel} · ${timeLeft(t)} left${again}`, "hint"));
      li.addEventListener("click", () => openTask(t.id));
    }
    list.append(li);
  }
  // A task that left the list closes - unless this device is answering it: a refresh
  // that lands while the answer is in flight (the approval executed the request) must
  // not hide the detail the outcome is about to be shown in.
  if (state.open && !state.tasks.has(state.open) && !$("detail").hidden
      && $("outcome").hidden && !state.answering) {
    closeTask();
  }
  const open = state.tasks.get(state.open);
  if (open && !open.error && $("progress")) $("progress").replaceWith(progress(open));
}

// A label and its value (text, or a node such as a grouped address); returns the value.
function row(dl, label, value) {
  const dd = el("dd");
  if (value instanceof Node) dd.append(value);
  else dd.textContent = value;
  dl.append(el("dt", label), dd);
  return dd;
}

// The broker's notes on a task: its own tier in words (and the fallbacks), who approved,
// and the time left of its own tier. Re-rendered whenever the task list refreshes.
function progress(t) {
  const broker = el("dl");
  broker.id = "progress";
  const own = ownToken(t);
  row(broker, "Tier", own ? tierWords(own) : "-").id = "tier";
  const fallbacks = (t.tokens || []).slice(1);
  if (fallbacks.length) row(broker, "Fallback", fallbacks.map(tierWords).join(" / "));
  row(broker, "Approved by", t.approvedBy.join(", ") || "nobody yet");
  if (t.rejectedBy.length) row(broker, "Rejected by", t.rejectedBy.join(", "));
  row(broker, "Time left", timeLeft(t)).id = "time-left";
  const earlier = t.earlierAttempts || [];
  if (earlier.length) row(broker, "Signed again", signedAgain(earlier)).id = "signed-again";
  return broker;
}

// A transfer whose signed transaction expired before it landed is signed again under a
// new request: say so, or the approver sees what looks like the same transfer twice.
function signedAgain(earlier) {
  const n = earlier.length;
  const which = earlier.map((a) => `${a.txid.slice(0, 12)}… (${a.reason})`).join("; ");
  return `attempt ${n + 1}: ${n === 1 ? "the earlier transaction" : `${n} earlier transactions`}`
    + ` expired without landing, so nothing moved by ${n === 1 ? "it" : "them"}: ${which}`;
}

function openTask(id) {
  const t = state.tasks.get(id);
  if (!t || t.error) return;
  state.open = id;
  state.shown = t;
  const b = t.body;
  const dl = el("dl");
  const intent = b.intent;
  if (intent) {
    row(dl, "Chain", `${intent.chain} (${intent.network})`);
    if (intent.kind !== "transfer") row(dl, "Kind", intent.kind);
    for (const x of intent.transfers) {
      row(dl, "Amount", amount(x.amount, x.asset, b));
      row(dl, "Asset", x.asset);
      row(dl, "To", address(x.destination));
    }
    // an allowance is money the spender can take later: shown like a transfer
    for (const g of intent.grants || []) {
      row(dl, "Allowance", amount(g.amount, g.asset, b));
      row(dl, "Asset", g.asset);
      row(dl, "Spender", address(g.grantee));
    }
    if (intent.rent && intent.rent !== "0") row(dl, "Rent", amount(intent.rent, intent.feeAsset, b));
    row(dl, "Fee (most)", amount(intent.fee, intent.feeAsset, b));
    for (const c of intent.calls || []) row(dl, "Calls", c);
    if (b.feeCap) row(dl, "Fee cap", amount(b.feeCap, intent.feeAsset, b));
  } else {
    row(dl, "Payload", `${b.payloadType}, not decoded by the HSM`);
  }
  // a modify: the policy change as the HSM signed it, line by line
  if (b.policyChange) {
    const changes = policyDiff(b.policyChange.from, b.policyChange.to);
    if (!changes.length) row(dl, "Policy", "no change");
    for (const d of changes) row(dl, d.sign === "+" ? "Adds" : "Removes", d.text);
  }
  row(dl, "Key", b.keyLabel);
  row(dl, "Action", b.action);
  // proven: the HSM verified the initiator's own signature; otherwise the broker's word
  row(dl, "Initiator", b.initiatorProven === true
    ? `${b.initiatorName ? `${b.initiatorName} (${b.initiator})` : b.initiator}, proven by their signature`
    : b.initiator || "-");
  row(dl, "HSM time", b.hsmTimestamp);
  row(dl, "Request", b.requestId);
  $("detail-body").replaceChildren(
    el("h2", headline(t)), el("p", "Verified: signed by your HSM", "ok"), dl,
    el("p", "Progress, as the broker reports it:", "broker"), progress(t));
  $("outcome").hidden = true;
  $("confirm").hidden = true;
  $("approve").disabled = $("reject").disabled = false;
  $("detail-actions").hidden = false;
  show("tasks", "detail");
  $("tasks").hidden = true;
}

function closeTask() {
  state.open = null;
  state.shown = null;
  $("confirm").hidden = true;
  show("tasks");
}

//: Rows of the verified detail that the confirm step restates: what moves, where, the fee.
const SUMMARY = /^(Amount|Allowance|To|Spender|Rent|Fee)/;

// The confirm step: nothing is signed until the approver has seen the summary - the very
// rows the detail shows from the verified challenge - and said yes; "Cancel" signs nothing.
function ask(reject) {
  const t = state.shown;
  if (!t || !t.bytes) return;
  const dl = el("dl");
  const detail = $("detail-body").querySelector("dl");
  for (const dt of detail.querySelectorAll("dt")) {
    if (!SUMMARY.test(dt.textContent)) continue;
    dl.append(dt.cloneNode(true), dt.nextElementSibling.cloneNode(true));
  }
  if (!dl.childElementCount) row(dl, "Request", headline(t));
  row(dl, "Key", t.body.keyLabel);
  const what = t.body.intent ? "transfer" : "request";
  $("confirm").className = reject ? "confirm reject" : "confirm";
  $("confirm-title").textContent = reject ? `Reject this ${what}?` : `Approve this ${what}?`;
  $("confirm-note").textContent = reject
    ? "Your rejection is signed and counts against the request; it cannot be undone."
    : "Check the end of the destination. Your approval is signed with this device's key.";
  $("confirm-body").replaceChildren(dl);
  $("confirm-yes").className = reject ? "danger solid" : "primary";
  $("confirm-yes").textContent = reject ? "Sign the rejection" : "Sign the approval";
  $("confirm-yes").dataset.reject = reject ? "1" : "";
  $("detail-actions").hidden = true;
  $("confirm").hidden = false;
  $("confirm-yes").focus();
}

function cancelAsk() {
  $("confirm").hidden = true;
  $("detail-actions").hidden = false;
}

async function answer(reject) {
  const t = state.shown;
  if (!t || !t.bytes) return;
  $("confirm").hidden = true;
  $("approve").disabled = $("reject").disabled = true;
  fail("");
  state.answering = true;
  try {
    const message = reject ? concat(REJECT_PREFIX, t.bytes) : t.bytes;
    const signature = b64(await state.sign(message));
    const r = await api(reject ? "/v1/rejection" : "/v1/approval", {
      id: t.id, approvalToBeSigned: t.approvalToBeSigned, signature,
      approverCertificate: state.device.credential });
    state.tasks.delete(t.id);
    $("detail-actions").hidden = true;
    $("outcome").textContent = `${reject ? "Rejected" : "Approved"}: request is ${r.status}`;
    $("outcome").className = reject ? "rejected" : "ok";
    $("outcome").hidden = false;
    renderList();
  } catch (e) {
    fail(`Not sent: ${e.message}`);
    $("approve").disabled = $("reject").disabled = false;
    $("detail-actions").hidden = false;
  } finally {
    state.answering = false;
  }
}

// -- start ------------------------------------------------------------------------------

async function start() {
  const d = state.device;
  if (!d) { show("enrol"); return; }
  if (!d.confirmed) await waitForConfirmation();
  state.hsmKey = await importHsmKey(d.hsmKeyB64);
  state.sign = signer(d);
  $("me").hidden = false;
  $("me-name").textContent = d.name;
  $("me-hsm").textContent = d.hsmFingerprint.slice(0, 16);
  show("tasks");
  listen();
}

$("enrol-key").addEventListener("click", () => enrol(enrolKey));
$("enrol-passkey").addEventListener("click", () => enrol(enrolPasskey));
$("approve").addEventListener("click", () => ask(false));
$("reject").addEventListener("click", () => ask(true));
$("confirm-yes").addEventListener("click", () => answer($("confirm-yes").dataset.reject === "1"));
$("confirm-no").addEventListener("click", cancelAsk);
$("back").addEventListener("click", closeTask);
$("forget").addEventListener("click", async () => {
  if (state.events) state.events.close();
  await forgetDevice();
  location.reload();
});
setInterval(() => {
  if (state.tasks.size && !$("tasks").hidden) renderList();
  const open = state.tasks.get(state.open);
  if (open && $("time-left")) $("time-left").textContent = timeLeft(open);
}, 1000);

loadDevice().then((d) => { state.device = d || null; return start(); })
  .catch((e) => fail(e.message));
