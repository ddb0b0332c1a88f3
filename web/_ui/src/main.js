// The dashboard page: follows the event stream at /v1/events, draws the
// globe, fills the panel, and verifies the ledger in the browser.
import { newState, apply, counts, totals, PHASES } from "./state.js";
import { Globe, COLORS } from "./globe.js";
import { verifyLedger } from "./ledger.js";
import { flops, bytes, energy, co2, num } from "./format.js";

const $ = (id) => document.getElementById(id);
const state = newState();
const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
const globe = new Globe($("globe"), { reducedMotion });
let panelDirty = true;
let ledgerRecords = []; // the last fetched /v1/ledger, parsed
let badIndex = null;

// ---- the event stream ----
function connect() {
  const es = new EventSource("v1/events");
  es.onopen = () => { $("conn").textContent = ""; };
  es.onerror = () => { $("conn").textContent = "reconnecting…"; };
  es.onmessage = (m) => {
    let e;
    try {
      e = JSON.parse(m.data);
    } catch {
      return;
    }
    const what = apply(state, e);
    if (what === "transfer") globe.addArc(e.transfer, performance.now());
    if (what === "snapshot" || what === "ledger") refreshLedger();
    panelDirty = true;
  };
}

// ---- the globe: drag, keys, spin ----
const canvas = $("globe");
let drag = null;
canvas.addEventListener("pointerdown", (ev) => {
  drag = { x: ev.clientX, y: ev.clientY };
  canvas.setPointerCapture(ev.pointerId);
});
canvas.addEventListener("pointermove", (ev) => {
  if (!drag) return;
  const k = 90 / globe.r;
  globe.rotate((ev.clientX - drag.x) * k, -(ev.clientY - drag.y) * k);
  drag = { x: ev.clientX, y: ev.clientY };
});
canvas.addEventListener("pointerup", () => { drag = null; });
canvas.addEventListener("pointercancel", () => { drag = null; });
canvas.addEventListener("keydown", (ev) => {
  const step = 10;
  const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
  if (moves[ev.key]) {
    globe.rotate(...moves[ev.key]);
    ev.preventDefault();
  } else if (ev.key === " ") {
    setSpin(!globe.spin);
    ev.preventDefault();
  }
});
function setSpin(on) {
  globe.spin = on;
  $("spin").textContent = on ? "Pause spin" : "Spin";
  $("spin").setAttribute("aria-pressed", String(on));
}
$("spin").addEventListener("click", () => setSpin(!globe.spin));
setSpin(globe.spin);
window.addEventListener("resize", () => globe.resize());

let last = performance.now();
function frame(now) {
  if (globe.spin && !drag) globe.rotate(((now - last) / 1000) * 4, 0); // 4 degrees a second
  last = now;
  globe.draw(state, now);
  if (panelDirty) {
    panelDirty = false;
    renderPanel();
  }
  requestAnimationFrame(frame);
}

// ---- the panel ----
function set(id, value, text) {
  const el = $(id);
  el.dataset.value = value == null ? "" : String(value);
  el.textContent = text ?? (value == null ? "–" : String(value));
}

function renderPanel() {
  const live = state.source !== "sim";
  set("source", state.source, state.source === null ? "connecting…" : live ? "Live network" : "Simulation (replay)");
  const c = counts(state);
  set("online", c.online);
  set("inround", c.inRound);
  set("placement", `${c.placed}/${c.unplaced}`, `${c.placed} placed, ${c.unplaced} unplaced`);
  set("drawn", globe.drawn ?? 0, `${state.nodes.size} node${state.nodes.size === 1 ? "" : "s"}`);

  const r = state.round;
  set("round", r ? r.round : null);
  set("phase", r ? r.phase : null);
  $("organiser").textContent = r ? `organiser: ${r.organiser}${r.cohort ? `, cohort of ${r.cohort}` : ""}` : "";
  const at = r ? PHASES.indexOf(r.phase === "failed" ? "closed" : r.phase) : -1;
  for (const li of $("timeline").children) {
    const i = PHASES.indexOf(li.dataset.phase);
    li.className = i === at ? "now" : i < at ? "past" : "";
    if (i === at) li.setAttribute("aria-current", "step");
    else li.removeAttribute("aria-current");
  }
  $("phaselog").replaceChildren(
    ...state.phaseLog.slice().reverse().map((p) => {
      const li = document.createElement("li");
      li.textContent = `round ${p.round}: ${p.phase} at ${when(p.t)}`;
      return li;
    }),
  );

  const h = state.history;
  const lastRound = h[h.length - 1];
  const measured = live ? "useful FLOPs the workers report ÷ round time" : "simulated";
  if (lastRound) {
    set("flops", lastRound.delivered_flops, flops(lastRound.delivered_flops) + "/s");
    $("flops-note").textContent = `(${measured}, round ${lastRound.round})`;
    set("completed", lastRound.completed, `${lastRound.completed} of ${lastRound.selected}${lastRound.late ? `, ${lastRound.late} late` : ""}${lastRound.dropped ? `, ${lastRound.dropped} dropped` : ""}`);
    set("ratio", lastRound.compression_ratio ?? null, lastRound.compression_ratio ? `${num(lastRound.compression_ratio, 1)}× smaller than dense fp32` : "–");
  }
  const t = totals(state);
  set("rounds", t.rounds);
  set("bytesup", t.bytesUp, bytes(t.bytesUp));
  set("bytesdown", t.bytesDown, bytes(t.bytesDown));
  set("totalflops", t.flops, flops(t.flops));
  set("energy", t.energyKWh, energy(t.energyKWh));
  $("energy-source").textContent = t.sources.size ? `(${[...t.sources].join(", ")})` : "";
  if (t.rounds && t.co2Known) {
    set("co2", t.co2Kg, co2(t.co2Kg));
    const g = lastRound?.grid_g_per_kwh;
    $("grid").textContent = g != null ? `at ${num(g, 0)} g CO₂/kWh` : "";
  } else {
    set("co2", null, "–");
    $("grid").textContent = t.rounds ? "(no grid intensity set)" : "";
  }
  renderLoss();
  renderSummary();
  renderHistory();
  renderLedger();
  $("coordkey").textContent = state.coordinatorKey || "–";
  $("coordkey").dataset.value = state.coordinatorKey;
  $("ledger-card").hidden = !state.coordinatorKey;
  if (state.gaps) $("conn").textContent = `${state.gaps} event(s) missed`;
}

function when(t) {
  if (state.source === "sim") return `${(t / 1000).toFixed(1)} s`;
  return new Date(t).toLocaleTimeString();
}

function renderLoss() {
  const pts = state.history.filter((r) => r.val_loss != null).map((r) => [r.round, r.val_loss]);
  const svg = $("losschart");
  const note = $("loss-note");
  if (pts.length === 0) {
    svg.replaceChildren();
    note.textContent = state.source === "sim" ? "No validation loss yet." : "Not measured: a live coordinator holds no validation data, so its rounds carry no validation loss.";
    return;
  }
  note.textContent = `Latest: ${num(pts[pts.length - 1][1], 4)} nats/token after round ${pts[pts.length - 1][0]}.`;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const X = (x) => 30 + ((x - x0) / (x1 - x0)) * 262, Y = (y) => 98 - ((y - y0) / (y1 - y0)) * 88;
  const ns = "http://www.w3.org/2000/svg";
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  };
  const line = el("polyline", { class: "line", points: pts.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ") });
  const dots = pts.slice(-1).map((p) => el("circle", { class: "dot", cx: X(p[0]).toFixed(1), cy: Y(p[1]).toFixed(1), r: 2.5 }));
  svg.replaceChildren(
    line,
    ...dots,
    el("text", { class: "axis", x: 2, y: 12 }, num(y1, 3)),
    el("text", { class: "axis", x: 2, y: 100 }, num(y0, 3)),
    el("text", { class: "axis", x: 30, y: 109 }, `round ${x0}`),
    el("text", { class: "axis", x: 292, y: 109, "text-anchor": "end" }, `round ${x1}`),
  );
}

function renderSummary() {
  const s = state.summary;
  const dc = s?.data_center;
  $("dc-card").hidden = !dc;
  if (!dc) return;
  $("dc-verdict").textContent = dc.verdict;
  const rows = [
    ["This network", `${energy(s.energy_kwh)}, ${co2(s.co2_kg)}, ${flops(s.flops)} in ${num(s.wall_s / 3600, 2)} h (simulated)`],
    ["Data center", `${energy(dc.energy_kwh)}, ${co2(dc.co2_kg)}: ${num(dc.hours, 1)} ${dc.accelerator}-hours`],
    ["Assumed", `${flops(dc.peak_flops)}/s peak at ${num(dc.utilisation * 100, 0)}% use, ${num(dc.power_w, 0)} W each with PUE ${num(dc.pue, 2)}, ${num(dc.grid_g_per_kwh, 0)} g CO₂/kWh`],
  ];
  $("dc-figures").replaceChildren(
    ...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      return [dt, dd];
    }),
  );
}

function renderHistory() {
  const body = $("history").tBodies[0];
  const rows = state.history.slice(-50).reverse();
  body.replaceChildren(
    ...rows.map((r) => {
      const tr = document.createElement("tr");
      tr.id = `round-${r.round}`;
      const cells = [
        r.failed ? `${r.round} (failed)` : String(r.round),
        `${r.completed}/${r.selected}`,
        `${num(r.duration_s, 1)} s`,
        bytes(r.bytes_up),
        r.compression_ratio ? `${num(r.compression_ratio, 1)}×` : "–",
        r.val_loss != null ? num(r.val_loss, 4) : "–",
      ];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.append(td);
      }
      return tr;
    }),
  );
}

// ---- the ledger ----
async function refreshLedger() {
  if (!state.coordinatorKey) return;
  try {
    const resp = await fetch("v1/ledger", { cache: "no-store" });
    if (!resp.ok) return;
    const text = await resp.text();
    ledgerRecords = text.split("\n").filter(Boolean).map((l) => {
      try {
        return JSON.parse(l);
      } catch {
        return null;
      }
    });
    panelDirty = true;
  } catch {
    // offline for a moment; the next ledger event retries
  }
}

function renderLedger() {
  const recs = ledgerRecords.map((r, i) => ({ r, i })).slice(-10).reverse();
  $("ledger").replaceChildren(
    ...recs.map(({ r, i }) => {
      const li = document.createElement("li");
      li.dataset.index = String(i);
      if (i === badIndex) li.className = "bad";
      if (!r) {
        li.textContent = `#${i}: unreadable`;
        return li;
      }
      const a = document.createElement("a");
      a.href = `#round-${r.round}`;
      a.textContent = `round ${r.round}`;
      const acc = (r.updates || []).filter((u) => u.accepted).length;
      li.append(`#${r.index} `, a, `: ${acc} update${acc === 1 ? "" : "s"}, hash ${String(r.hash).slice(0, 12)}…`);
      return li;
    }),
  );
}

$("verify").addEventListener("click", async () => {
  const out = $("verify-result");
  out.dataset.state = "running";
  out.textContent = "Checking…";
  try {
    const resp = await fetch("v1/ledger", { cache: "no-store" });
    if (!resp.ok) throw new Error(`GET /v1/ledger: ${resp.status}`);
    const body = new Uint8Array(await resp.arrayBuffer());
    const res = await verifyLedger(body, state.coordinatorKey, crypto.subtle);
    await refreshLedger();
    if (res.ok) {
      badIndex = null;
      out.dataset.state = "ok";
      out.dataset.count = String(res.count);
      out.dataset.bad = "";
      out.textContent = `All ${res.count} records verify: the SHA-256 hash chain is unbroken and every Ed25519 signature matches the coordinator key above.`;
    } else {
      badIndex = res.bad.index;
      out.dataset.state = "bad";
      out.dataset.count = String(res.count);
      out.dataset.bad = String(res.bad.index);
      out.textContent = `Record ${res.bad.index}${res.bad.round != null ? ` (round ${res.bad.round})` : ""} fails: ${res.bad.reason}. The ${res.count} record(s) before it verify.`;
    }
  } catch (e) {
    out.dataset.state = "error";
    out.textContent = `Could not check the ledger: ${e.message}`;
  }
  panelDirty = true;
});

// For the browser tests and anyone curious: the page's model and frame stats.
window.opencluster = { state, globe, colors: COLORS };

connect();
requestAnimationFrame(frame);
