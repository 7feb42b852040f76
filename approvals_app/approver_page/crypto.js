// Keys, signatures and the HSM challenge check - WebCrypto and WebAuthn only.
//
// Trust: the HSM identity key is fetched once, at enrolment, from /v1/hsm, checked
// against the fingerprint in the enrolment link (#hsm=<sha256 hex>) when there is one,
// shown to the user, and stored in IndexedDB with the device key. It is never fetched
// again: a broker that later serves another key, or a challenge it altered, cannot pass
// verifyChallenge(). The administrator who confirms the enrolment restates the HSM
// fingerprint and the server refuses a device that pinned another one. What remains
// trusted is the code of this page itself (served by the same origin): serve it from a
// separate static origin, or install it, where the broker must not be able to change it.

const enc = new TextEncoder();
export const REJECT_PREFIX = enc.encode("ska-reject-v1:");
export const ENROL_PREFIX = "ska-enrol-v1:";
const CHALLENGE_DOMAIN = enc.encode("SKA-CHALLENGE-v1:");
const HEAD_DOMAIN = enc.encode("SKA-AUDIT-HEAD-v1:");
const ECDSA = { name: "ECDSA", namedCurve: "P-256" };
const SHA256 = { name: "ECDSA", hash: "SHA-256" };

export const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)));
export const unb64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
export const b64url = (bytes) => b64(bytes).replace(/\+/g, "-").replace(/\//g, "_")
  .replace(/=+$/, "");
export const unb64url = (text) => unb64(text.replace(/-/g, "+").replace(/_/g, "/")
  + "===".slice((text.length + 3) % 4));
export const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
};
export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}
export async function sha256hex(bytes) {
  return [...await sha256(bytes)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// -- IndexedDB: one record, the device ------------------------------------------------

function db() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open("ska-approver", 1);
    req.onupgradeneeded = () => req.result.createObjectStore("state");
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
async function tx(mode, run) {
  const conn = await db();
  return new Promise((resolve, reject) => {
    const t = conn.transaction("state", mode);
    const req = run(t.objectStore("state"));
    t.oncomplete = () => resolve(req.result);
    t.onerror = () => reject(t.error);
  });
}
export const loadDevice = () => tx("readonly", (s) => s.get("device"));
export const saveDevice = (device) => tx("readwrite", (s) => s.put(device, "device"));
export const forgetDevice = () => tx("readwrite", (s) => s.delete("device"));

// -- the device key: non-extractable ECDSA P-256 ----------------------------------------

export async function newDeviceKey() {
  const pair = await crypto.subtle.generateKey(ECDSA, false, ["sign", "verify"]);
  const spki = new Uint8Array(await crypto.subtle.exportKey("spki", pair.publicKey));
  return { privateKey: pair.privateKey, publicKey: b64(spki) };
}

// A signer turns bytes into the approval "signature" the HSM verifies: a P1363 ECDSA
// signature for a device key, a WebAuthn assertion (as JSON) for a passkey.
export function signer(device) {
  if (device.kind === "passkey") {
    return (bytes) => passkeyAssert(device, bytes);
  }
  return async (bytes) => new Uint8Array(
    await crypto.subtle.sign(SHA256, device.privateKey, bytes));
}

async function passkeyAssert(device, bytes) {
  // The WebAuthn challenge is SHA-256 of the bytes approved (see hsm_emulator/credentials).
  const cred = await navigator.credentials.get({ publicKey: {
    challenge: await sha256(bytes), rpId: device.rpId, userVerification: "preferred",
    allowCredentials: [{ type: "public-key", id: unb64url(device.credentialId) }],
  } });
  const r = cred.response;
  const doc = { authenticatorData: b64url(r.authenticatorData),
    clientDataJSON: b64url(r.clientDataJSON), signature: b64url(r.signature) };
  const keys = Object.keys(doc).sort();  // canonical JSON, as the HSM encodes it
  return enc.encode("{" + keys.map((k) => `"${k}":"${doc[k]}"`).join(",") + "}");
}

export async function createPasskey(options) {
  const o = JSON.parse(options);
  o.challenge = unb64url(o.challenge);
  o.user.id = unb64url(o.user.id);
  o.excludeCredentials = (o.excludeCredentials || []).map((c) => ({ ...c, id: unb64url(c.id) }));
  const cred = await navigator.credentials.create({ publicKey: o });
  const r = cred.response;
  return { credential: { id: cred.id, rawId: b64url(cred.rawId), type: cred.type,
    response: { clientDataJSON: b64url(r.clientDataJSON),
      attestationObject: b64url(r.attestationObject) },
    clientExtensionResults: cred.getClientExtensionResults() },
  rpId: o.rp.id };
}

// -- the HSM's challenge ----------------------------------------------------------------

export async function importHsmKey(spkiB64) {
  return crypto.subtle.importKey("spki", unb64(spkiB64), ECDSA, false, ["verify"]);
}

const HEAD = enc.encode('{"body":');
// Versions accepted: 3 (the HSM's epoch and seq, for the witness), 2 (the HSM echoes
// each asset's unit from the key's policy) and 1 (requests opened before that: amounts
// are shown in base units with the asset id). Versions 1 and 2 count as epoch 0.
const TAIL = /,"format":"ska-challenge","signature":"([A-Za-z0-9+/]{86}==)","version":([123])}$/;
const isCount = (n) => Number.isSafeInteger(n) && n >= 0;

// Verify an approvalToBeSigned against the pinned HSM key; return {bytes, body, version,
// epoch}.
// The envelope is canonical JSON with sorted keys, so the signed body is exactly the
// bytes between '{"body":' and the tail: we verify those bytes and display their parse,
// never a re-serialisation. Throws on anything altered, malformed or unexpected.
export async function verifyChallenge(hsmKey, approvalToBeSigned, requestId) {
  let bytes;
  try { bytes = unb64(approvalToBeSigned); } catch { throw new Error("challenge is not base64"); }
  const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  const tail = TAIL.exec(text);
  if (!tail || !HEAD.every((b, i) => bytes[i] === b)) {
    throw new Error("challenge is not an SKA challenge (v1 to v3)");
  }
  const tailBytes = enc.encode(tail[0]).length;
  const bodyBytes = bytes.slice(HEAD.length, bytes.length - tailBytes);
  const ok = await crypto.subtle.verify(SHA256, hsmKey, unb64(tail[1]),
    concat(CHALLENGE_DOMAIN, bodyBytes));
  if (!ok) throw new Error("the HSM did not sign this challenge: it was altered");
  const body = JSON.parse(new TextDecoder().decode(bodyBytes));
  if (typeof body !== "object" || body === null || body.requestId !== requestId) {
    throw new Error("challenge belongs to another request");
  }
  const version = Number(tail[2]);
  if (version >= 2 && (typeof body.units !== "object" || body.units === null
      || Array.isArray(body.units))) {
    throw new Error("a version 2 challenge must name its units");
  }
  if (version >= 3 && !(isCount(body.epoch) && isCount(body.seq))) {
    throw new Error("a version 3 challenge must carry the HSM's epoch and seq");
  }
  return { bytes, body, version, epoch: version >= 3 ? body.epoch : 0 };
}

// -- the HSM's signed audit head (hsm_emulator.audit.SignedHead) ------------------------

// A float as Python's repr writes it, which is how the HSM's canonical JSON writes `at`:
// the same shortest round-trip digits as JavaScript, with ".0" on a whole number. The
// two differ in exponent notation only (at 1e16 and above, below 1e-4): no clock time.
function pyFloat(x) {
  if (typeof x !== "number" || !(x >= 1e-4 && x < 1e16)) {
    throw new Error("the audit head's time is not a clock time");
  }
  return Number.isInteger(x) ? `${x}.0` : String(x);
}

// Verify the audit head the broker serves with the task list against the pinned HSM key;
// return {epoch, seq, hash}. The signed body is rebuilt from the fields (canonical JSON:
// sorted keys, no spaces), so a field the broker changed fails the signature.
export async function verifyHead(hsmKey, head) {
  if (typeof head !== "object" || head === null) {
    throw new Error("the server sent no signed audit head");
  }
  const { seq, hash, at, epoch, counter, signature } = head;
  if (!isCount(epoch) || !isCount(counter)) {
    throw new Error(`the HSM's audit head (seq ${seq}) carries no epoch: an old head?`);
  }
  if (!isCount(seq) || !/^[0-9a-f]{64}$/.test(hash) || !/^[0-9a-f]{128}$/.test(signature)) {
    throw new Error("the server sent a malformed audit head");
  }
  const body = `{"at":${pyFloat(at)},"counter":${counter},"epoch":${epoch},`
    + `"hash":"${hash}","seq":${seq}}`;
  const sig = Uint8Array.from(signature.match(/../g), (h) => parseInt(h, 16));
  const ok = await crypto.subtle.verify(SHA256, hsmKey, sig, concat(HEAD_DOMAIN,
    enc.encode(body)));
  if (!ok) throw new Error(`the audit head (seq ${seq}) was not signed by your HSM`);
  return { epoch, seq, hash };
}

// -- amounts, by the rules of hsm_emulator/display.py's format_amount -------------------

const group = (digits) => digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");

// Base units of an asset as a person reads them, in the unit the HSM-signed challenge
// names (body.units, from the key's policy): "0.00000141 BTC"; without one, the base
// units and the asset id, never a guessed unit.
export function formatAmount(value, asset, units) {
  const text = String(value);
  if (!/^\d+$/.test(text)) return `${text} ${asset} (not a whole number of base units)`;
  const unit = units && Object.prototype.hasOwnProperty.call(units, asset) ? units[asset] : null;
  const d = unit ? unit.decimals : undefined;
  if (!Number.isInteger(d) || d < 0 || d > 77 || typeof unit.symbol !== "string"
      || !unit.symbol) {
    return `${group(text.replace(/^0+(?=\d)/, ""))} base units of ${asset}`;
  }
  const v = text.padStart(d + 1, "0");
  const whole = v.slice(0, v.length - d).replace(/^0+(?=\d)/, "");
  const frac = v.slice(v.length - d).replace(/0+$/, "");
  return `${group(whole)}${frac ? "." + frac : ""} ${unit.symbol}`;
}
