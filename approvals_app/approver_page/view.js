// What the approver page shows beside the verified challenge, in words a phone can hold:
// addresses in full (grouped, wrapped, never cut), the request's own tier and its time.
// Kept apart from app.js (the flow) and crypto.js (the checks): rendering only.

export function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

//: Characters per group of an address: short enough to compare by eye, and the groups
//: wrap onto the next line instead of pushing the page sideways on a 390 px phone.
const GROUP = 4;

// An address in full, in groups of four. The groups are separate boxes, not separated by
// spaces, so the element's text (and a copy of it) is the address exactly; the first and
// last groups - what people compare - are marked.
export function address(text) {
  const span = el("span", undefined, "addr");
  span.title = text;
  for (let i = 0; i < text.length; i += GROUP) {
    span.append(el("span", text.slice(i, i + GROUP)));
  }
  if (span.firstChild) span.firstChild.classList.add("edge");
  if (span.lastChild) span.lastChild.classList.add("edge");
  return span;
}

// The request's own token: the broker lists the tokens that can still release it in the
// policy's order, so the first is the tier its amount fits; later ones are fallbacks
// whose (longer) timeouts are not what this approver is racing against.
export function ownToken(t) {
  return (t.tokens || [])[0] || null;
}

export function duration(seconds) {
  const m = Math.floor(seconds / 60);
  if (m >= 60) return `${Math.floor(m / 60)} h ${m % 60} min`;
  return `${m} min ${Math.floor(seconds % 60)} s`;
}

export function timeLeft(t) {
  const own = ownToken(t);
  if (!own || !own.deadline) return "no deadline";
  const s = own.deadline - Date.now() / 1000;
  return s <= 0 ? "expired" : duration(s);
}

// "medium: 2 traders, 1 more needed" - per group its quorum and what is still missing.
export function tierWords(token) {
  const groups = token.groups || [];
  if (!groups.length) return `${token.name}: no approvals needed`;
  const parts = groups.map((g) => `${g.quorum} ${g.name}, `
    + (g.missing ? `${g.missing} more needed` : "complete"));
  const hold = token.holdRemaining > 0 ? `; hold ends in ${duration(token.holdRemaining)}` : "";
  return `${token.name}: ${parts.join("; ")}${hold}`;
}

// A modify as lines: what the new policy removes (-) and adds (+), from the two policy
// summaries the HSM signed into the challenge (`policyChange`: groups, quorums, approvers
// by name and fingerprint, tiers with their holds, amounts, fee caps and limits). Lists of
// named things are keyed by their name (approvers by fingerprint), so a reordering is no
// change; every other difference is shown, nothing is summarised away.
export function policyDiff(from, to) {
  const a = flatten(from), b = flatten(to);
  const out = [];
  for (const k of [...new Set([...a.keys(), ...b.keys()])].sort()) {
    if (a.get(k) === b.get(k)) continue;
    if (a.has(k)) out.push({ sign: "-", text: line(k, a.get(k)) });
    if (b.has(k)) out.push({ sign: "+", text: line(k, b.get(k)) });
  }
  return out;
}

const LISTED = "\u0000listed";

function line(key, value) {
  return value === LISTED ? key : `${key}: ${value}`;
}

function flatten(value, path = "", out = new Map()) {
  if (Array.isArray(value)) {
    if (!value.length) out.set(path, "none");
    value.forEach((item, i) => {
      if (item && typeof item === "object" && item.fingerprint) {
        out.set(`${path}: ${item.name || "unnamed"} (${String(item.fingerprint).slice(0, 12)})`,
          LISTED);
      } else {
        const key = item && typeof item === "object" ? (item.name ?? item.asset ?? i) : i;
        flatten(item, `${path}[${key}]`, out);
      }
    });
  } else if (value && typeof value === "object") {
    const keys = Object.keys(value).sort();
    if (!keys.length) out.set(path, "none");
    for (const k of keys) flatten(value[k], path ? `${path}.${k}` : k, out);
  } else {
    out.set(path, value === null ? "none" : String(value));
  }
  return out;
}
