// node verify-cli.mjs LEDGER_FILE KEY: runs the page's ledger check
// (src/ledger.js) with Node's WebCrypto and prints {ok, count, bad} as
// JSON. web/ledger_js_test.go compares its verdicts with the Go verifier's.
import { readFileSync } from "node:fs";
import { webcrypto } from "node:crypto";
import { verifyLedger } from "../src/ledger.js";

const [file, key] = process.argv.slice(2);
const res = await verifyLedger(new Uint8Array(readFileSync(file)), key, webcrypto.subtle);
console.log(JSON.stringify({ ok: res.ok, count: res.count, bad: res.bad }));
