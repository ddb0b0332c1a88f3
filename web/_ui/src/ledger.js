// Verifies a coordinator's ledger (GET /v1/ledger, JSON lines) in the
// browser, with the same rules as coordinator/ledger's Verify (see the
// package doc in coordinator/ledger/record.go):
//   - a record's hash is the SHA-256 of its line cut at `,"hash":"` with
//     "}" appended (the canonical encoding without hash and signature);
//   - the coordinator signs the ASCII bytes SIGNING_PREFIX + hash with
//     Ed25519; the page checks it against the key it shows (pinned), not
//     against the key a record names;
//   - index runs 0, 1, 2…; prev_hash is the previous record's hash (64
//     zeros or "" for the first); round ids increase; adapter_before is the
//     previous adapter_after; one coordinator key throughout;
//   - every line is byte for byte the canonical encoding of what it parses
//     to (Go's encoding/json: compact, <>& and U+2028/9 escaped, shortest
//     float form).
// It needs only WebCrypto (crypto.subtle): SHA-256 and Ed25519.

export const SIGNING_PREFIX = "opencluster ledger record v1 ";
export const GENESIS_HASH = "0".repeat(64);

const TAIL = /,"hash":"([0-9a-f]{64})","signature":"([A-Za-z0-9+/]{86}==)"\}$/;
const enc = new TextEncoder();

function hex(buf) {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromBase64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// parseKey decodes "ed25519:<base64>" to its 32 raw bytes, or throws.
export function parseKey(key) {
  if (typeof key !== "string" || !key.startsWith("ed25519:")) throw new Error(`key ${JSON.stringify(key)}: want "ed25519:<base64>"`);
  let raw;
  try {
    raw = fromBase64(key.slice(8));
  } catch {
    throw new Error(`key ${JSON.stringify(key)}: bad base64`);
  }
  if (raw.length !== 32) throw new Error(`key ${JSON.stringify(key)}: ${raw.length} bytes, want 32`);
  return raw;
}

// splitLines splits the body at "\n"; every line must end with one.
export function splitLines(bytes) {
  const lines = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === 0x0a) {
      lines.push(bytes.subarray(start, i));
      start = i + 1;
    }
  }
  return { lines, rest: bytes.subarray(start) };
}

// goString is JSON.stringify for a string with Go's extra escapes.
function goString(s) {
  return JSON.stringify(s).replace(/[<>&\u2028\u2029]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

// goJSON encodes a parsed value the way Go's encoding/json wrote it, keys
// in the order they were read. Numbers: JavaScript's shortest form equals
// Go's for every finite float64 (both switch to exponent form below 1e-6 and
// from 1e21 on, and Go trims "e-07" to "e-7"); integers above 2^53 cannot
// round-trip here and are reported as non-canonical.
export function goJSON(v) {
  if (v === null) return "null";
  switch (typeof v) {
    case "string":
      return goString(v);
    case "number":
      if (!Number.isFinite(v)) throw new Error("non-finite number");
      return Object.is(v, -0) ? "-0" : String(v);
    case "boolean":
      return v ? "true" : "false";
    case "object":
      if (Array.isArray(v)) return "[" + v.map(goJSON).join(",") + "]";
      return "{" + Object.keys(v).map((k) => goString(k) + ":" + goJSON(v[k])).join(",") + "}";
  }
  throw new Error(`cannot encode ${typeof v}`);
}

const isHash = (s) => typeof s === "string" && /^[0-9a-f]{64}$/.test(s);

// verifyLedger checks the whole body (a Uint8Array of ledger.jsonl) and
// returns {ok, count, records, bad: {index, round, reason} | null}. It
// stops at the first bad record, as the Go verifier does. subtle is
// crypto.subtle (passed in so Node's tests can use theirs).
export async function verifyLedger(bytes, pinnedKey, subtle) {
  const records = [];
  const fail = (index, round, reason) => ({ ok: false, count: records.length, records, bad: { index, round, reason } });
  let key;
  try {
    key = await subtle.importKey("raw", parseKey(pinnedKey), { name: "Ed25519" }, false, ["verify"]);
  } catch (e) {
    return fail(0, null, `pinned coordinator key: ${e.message}`);
  }
  const { lines, rest } = splitLines(bytes);
  const dec = new TextDecoder("utf-8", { fatal: true });
  let prev = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    let text, rec;
    try {
      text = dec.decode(line);
    } catch {
      return fail(i, null, "not valid UTF-8");
    }
    try {
      rec = JSON.parse(text);
    } catch (e) {
      return fail(i, null, `invalid record JSON: ${e.message}`);
    }
    const round = typeof rec?.round === "number" ? rec.round : null;
    const m = TAIL.exec(text);
    if (!m) return fail(i, round, 'the line does not end with "hash" and "signature" fields');
    let canonical;
    try {
      canonical = goJSON(rec) === text;
    } catch (e) {
      return fail(i, round, `not in canonical form: ${e.message}`);
    }
    if (!canonical) return fail(i, round, "not in canonical form (spacing, escapes, key order or number format changed)");
    const [, hash, sig] = m;
    // The suffix is ASCII, so its length in characters is its length in bytes.
    const body = new Uint8Array(line.length - (text.length - m.index) + 1);
    body.set(line.subarray(0, body.length - 1));
    body[body.length - 1] = 0x7d; // "}"
    const got = hex(await subtle.digest("SHA-256", body));
    if (got !== hash) return fail(i, round, `hash mismatch: record says ${hash}, content hashes to ${got}`);
    if (rec.version !== 1) return fail(i, round, `version ${rec.version}: this page reads version 1`);
    if (rec.index !== i) return fail(i, round, `index ${rec.index} out of sequence: want ${i}`);
    if (rec.coordinator_key !== pinnedKey) return fail(i, round, `signed by coordinator key ${rec.coordinator_key}, the page pins ${pinnedKey}`);
    if (!(await subtle.verify({ name: "Ed25519" }, key, fromBase64(sig), enc.encode(SIGNING_PREFIX + hash)))) {
      return fail(i, round, `bad coordinator signature for key ${pinnedKey}`);
    }
    if (!isHash(rec.adapter_before) || !isHash(rec.adapter_after)) return fail(i, round, "adapter_before/adapter_after: want 64 lowercase hex digits");
    if (prev === null) {
      if (rec.prev_hash !== GENESIS_HASH && rec.prev_hash !== "") return fail(i, round, "prev_hash: the first record's must be 64 zeros or empty");
    } else {
      if (rec.prev_hash !== prev.hash) return fail(i, round, `prev_hash ${rec.prev_hash} is not the previous record's hash ${prev.hash}`);
      if (!(rec.round > prev.round)) return fail(i, round, `round ${rec.round} does not come after the previous record's round ${prev.round}`);
      if (rec.adapter_before !== prev.adapter_after) return fail(i, round, `adapter_before ${rec.adapter_before} is not the previous record's adapter_after ${prev.adapter_after}`);
    }
    prev = rec;
    records.push(rec);
  }
  if (rest.length > 0) return fail(lines.length, null, "last line has no newline: truncated or torn write");
  return { ok: true, count: records.length, records, bad: null };
}
