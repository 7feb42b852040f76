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
