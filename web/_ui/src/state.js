// The dashboard's model of the network, folded from the event stream
// (docs/events.md). Pure: no DOM, so Node's tests can drive it.

export const PHASES = ["select", "propagate", "compute", "aggregate", "closed"];
const IN_ROUND = new Set(["organiser", "receiving", "computing", "sending", "done", "late"]);

export function newState() {
  return {
    seq: 0,
    source: null,
    coordinatorKey: "",
    model: "",
    nodes: new Map(), // id -> node event, plus .flash for transfer animations
    order: [], // ids in arrival order, for stable places in the unplaced ring
    round: null, // the phase event of the round in flight
    phaseLog: [], // [{round, phase, t}], newest last, at most 12
    history: [], // closed rounds (round events), oldest first, at most 500
    summary: null,
    ledger: [], // ledger events, newest last, at most 50
    transfers: [], // {node, direction, bytes, t} for arcs, newest last
    gaps: 0, // events missed (seq jumped), so the page can say so
  };
}

// apply folds one event into s and returns what changed ("nodes", "round",
// "history", "ledger", "summary", "transfer", "snapshot").
export function apply(s, e) {
  if (e.type === "snapshot") {
    const snap = e.snapshot || {};
    const fresh = newState();
    Object.assign(s, fresh);
    s.seq = e.seq;
    s.source = snap.source || "live";
    s.coordinatorKey = snap.coordinator_key || "";
    s.model = snap.model || "";
    for (const n of snap.nodes || []) setNode(s, n);
    s.round = snap.round || null;
    if (s.round) s.phaseLog.push({ round: s.round.round, phase: s.round.phase, t: e.t });
    s.history = (snap.history || []).slice(-500);
    s.summary = snap.summary || null;
    return "snapshot";
  }
  if (s.seq && e.seq !== s.seq + 1) s.gaps += Math.max(0, e.seq - s.seq - 1);
  s.seq = e.seq;
  switch (e.type) {
    case "node":
      if (e.node.state === "offline") {
        if (s.nodes.delete(e.node.id)) s.order = s.order.filter((id) => id !== e.node.id);
      } else {
        setNode(s, e.node);
      }
      return "nodes";
    case "phase": {
      s.round = e.phase;
      const last = s.phaseLog[s.phaseLog.length - 1];
      if (!last || last.round !== e.phase.round || last.phase !== e.phase.phase) {
        s.phaseLog.push({ round: e.phase.round, phase: e.phase.phase, t: e.t });
        if (s.phaseLog.length > 12) s.phaseLog.shift();
      }
      return "round";
    }
    case "transfer": {
      const tr = { ...e.transfer, t: e.t };
      s.transfers.push(tr);
      if (s.transfers.length > 2000) s.transfers.splice(0, s.transfers.length - 2000);
      return "transfer";
    }
    case "round":
      s.history.push(e.round);
      if (s.history.length > 500) s.history.shift();
      return "history";
    case "ledger":
      s.ledger.push(e.ledger);
      if (s.ledger.length > 50) s.ledger.shift();
      return "ledger";
    case "summary":
      s.summary = e.summary;
      return "summary";
  }
  return null;
}

function setNode(s, n) {
  const old = s.nodes.get(n.id);
  if (!old) s.order.push(n.id);
  s.nodes.set(n.id, { ...n, flash: old?.flash });
}

// counts returns the panel's node figures.
export function counts(s) {
  let inRound = 0, placed = 0;
  for (const n of s.nodes.values()) {
    if (IN_ROUND.has(n.state)) inRound++;
    if (n.placed) placed++;
  }
  return { online: s.nodes.size, inRound, placed, unplaced: s.nodes.size - placed };
}

// totals adds up the closed rounds in the history.
export function totals(s) {
  const t = { rounds: s.history.length, bytesUp: 0, bytesDown: 0, flops: 0, energyKWh: 0, co2Kg: 0, co2Known: true, sources: new Set() };
  for (const r of s.history) {
    t.bytesUp += r.bytes_up || 0;
    t.bytesDown += r.bytes_down || 0;
    t.flops += r.flops || 0;
    t.energyKWh += r.energy_kwh || 0;
    if (r.co2_kg == null) t.co2Known = false;
    else t.co2Kg += r.co2_kg;
    if (r.energy_source) t.sources.add(r.energy_source);
  }
  return t;
}
