// This device's witness of the HSM: its state must never go back (custody/witness.py
// holds the same rules for the command-line approver and `custody audit-verify`).
//
// Per HSM identity key (its SHA-256, the fingerprint the page pinned) the page remembers
// in localStorage the highest epoch and the highest signed audit head (epoch, seq, hash)
// it has verified, and refuses a head whose (epoch, seq) is lower (rewound), one with
// the same epoch and seq but another hash (forked), and a challenge issued in an earlier
// epoch (from before a restore from backup: void). An older open task legitimately has
// a lower challenge seq: only the head and the epoch must not go back. A higher epoch is
// a restore: accepted, remembered and said.

const STORE = "ska-witness-v1";
const ADVICE = "the HSM's state may have been rewound; do not approve";

// The pure rules. memory: {epoch, head: {epoch, seq, hash} | null} or null (never seen).
// Each returns {memory, notes} or throws an Error that says what went back.
export function witnessHead(memory, head) {
  if (!memory) return { memory: { epoch: head.epoch, head }, notes: [] };
  if (head.epoch < memory.epoch) {
    throw new Error(`the HSM's epoch went back from ${memory.epoch} to ${head.epoch} `
      + `(audit head seq ${head.seq}): ${ADVICE}`);
  }
  const last = memory.head;
  if (last && head.epoch === last.epoch) {
    if (head.seq < last.seq) {
      throw new Error(`the HSM's audit head went back from seq ${last.seq} to ${head.seq}: `
        + ADVICE);
    }
    if (head.seq === last.seq && head.hash !== last.hash) {
      throw new Error(`the HSM's audit head at seq ${head.seq} is not the one seen before: `
        + `its log was forked or rewritten; ${ADVICE}`);
    }
  }
  const newer = !last || head.epoch > last.epoch
    || (head.epoch === last.epoch && head.seq > last.seq);
  return { memory: { epoch: Math.max(memory.epoch, head.epoch), head: newer ? head : last },
    notes: restored(memory.epoch, head.epoch) };
}

export function witnessEpochs(memory, epochs) {
  const top = Math.max(memory.epoch, ...epochs);
  return { memory: { ...memory, epoch: top }, notes: restored(memory.epoch, top) };
}

export function challengeRefusal(memory, epoch) {
  return epoch < memory.epoch
    ? `its challenge was issued in epoch ${epoch}, before the HSM's restore to epoch `
      + `${memory.epoch}: it is void - do not approve`
    : null;
}

function restored(before, now) {
  return now > before
    ? [`The HSM was restored from a backup: its epoch moved from ${before} to ${now}; `
      + "approvals and challenges from before the restore are void."]
    : [];
}

// -- localStorage ---------------------------------------------------------------------

function readAll() {
  const raw = localStorage.getItem(STORE);
  if (raw === null) return {};
  const all = JSON.parse(raw);
  if (typeof all !== "object" || all === null) throw new Error("damaged witness record");
  return all;
}

// Witness one listing: the verified head, then the epochs of the verified challenges
// ({requestId: epoch}). Throws (and remembers nothing) if the head goes back; otherwise
// remembers, and returns {notes, refused: {requestId: why}}.
export function observe(hsmFingerprint, head, epochs) {
  const all = readAll();
  let seen = witnessHead(all[hsmFingerprint] || null, head);
  const notes = [...seen.notes];
  seen = witnessEpochs(seen.memory, Object.values(epochs));
  notes.push(...seen.notes);
  all[hsmFingerprint] = seen.memory;
  localStorage.setItem(STORE, JSON.stringify(all));
  const refused = {};
  for (const [id, epoch] of Object.entries(epochs)) {
    const why = challengeRefusal(seen.memory, epoch);
    if (why) refused[id] = why;
  }
  return { notes, refused };
}
