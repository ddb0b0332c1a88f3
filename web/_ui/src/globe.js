// The globe: an orthographic projection of Natural Earth's 1:110m
// countries drawn on a 2D canvas (no WebGL), one point per node coloured
// by state, and arcs for transfers. Nodes without a region sit on a ring
// around the globe ("unplaced"); a central coordinator sits at the top of
// that ring.
import { geoOrthographic, geoPath, geoGraticule10, geoInterpolate } from "d3-geo";
import { feature, mesh } from "topojson-client";
import world from "world-atlas/countries-110m.json";

export const COLORS = {
  idle: "#6b8fd6",
  organiser: "#b36bff",
  receiving: "#ff9f1c",
  computing: "#2ad4f0",
  sending: "#3ddc84",
  done: "#a7e8bd",
  late: "#8d939c",
  dropped: "#8d939c",
};
const FLASH_MS = 1400; // how long a transfer arc (and the node's colour for it) lasts
const MAX_ARCS = 400;
const RAD = Math.PI / 180;

export class Globe {
  constructor(canvas, { reducedMotion }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.projection = geoOrthographic().clipAngle(90).precision(0.5);
    this.path = geoPath(this.projection, this.ctx);
    this.land = feature(world, world.objects.countries);
    this.borders = mesh(world, world.objects.countries, (a, b) => a !== b);
    this.graticule = geoGraticule10();
    this.rotation = [-10, -20];
    this.spin = !reducedMotion;
    this.arcs = [];
    this.stats = { frames: 0, drawMs: [] };
    this.resize();
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = this.canvas.clientWidth || 600;
    const h = this.canvas.clientHeight || w;
    this.canvas.width = Math.round(w * dpr);
    this.canvas.height = Math.round(h * dpr);
    this.dpr = dpr;
    this.w = w;
    this.h = h;
    this.r = Math.min(w, h) * 0.38;
    this.projection.translate([w / 2, h / 2]).scale(this.r);
  }

  rotate(dLon, dLat) {
    this.rotation[0] += dLon;
    this.rotation[1] = Math.max(-80, Math.min(80, this.rotation[1] + dLat));
  }

  // where returns a node's screen point and whether it is in view
  // (unplaced nodes are always in view, on the ring).
  placer(state) {
    const [lam, phi] = this.rotation;
    const l0 = lam * RAD, cp = Math.cos(phi * RAD), sp = Math.sin(phi * RAD);
    const cx = this.w / 2, cy = this.h / 2, r = this.r;
    const ring = [];
    for (const id of state.order) {
      const n = state.nodes.get(id);
      if (n && !n.placed) ring.push(id);
    }
    const ringIndex = new Map(ring.map((id, i) => [id, i]));
    const ringR = r * 1.13;
    const ringN = Math.max(ring.length, 1);
    return (n) => {
      if (!n) return null;
      if (n.placed) {
        const lat = n.lat * RAD, lon = n.lon * RAD + l0;
        const x = Math.cos(lat) * Math.cos(lon), y = Math.cos(lat) * Math.sin(lon), z = Math.sin(lat);
        const X = x * cp - z * sp; // towards the viewer when > 0
        const Z = z * cp + x * sp;
        return { x: cx + r * y, y: cy - r * Z, visible: X > 0 };
      }
      const i = ringIndex.get(n.id) ?? 0;
      const a = -Math.PI / 2 + ((i + 1) / (ringN + 1)) * 2 * Math.PI;
      return { x: cx + ringR * Math.cos(a), y: cy + ringR * Math.sin(a), visible: true };
    };
  }

  // coordinatorPoint is where a central coordinator is drawn.
  coordinatorPoint() {
    return { x: this.w / 2, y: this.h / 2 - this.r * 1.13, visible: true };
  }

  addArc(tr, now) {
    this.arcs.push({ node: tr.node, dir: tr.direction, start: now });
    if (this.arcs.length > MAX_ARCS) this.arcs.splice(0, this.arcs.length - MAX_ARCS);
  }

  draw(state, now) {
    const t0 = performance.now();
    const ctx = this.ctx;
    this.projection.rotate(this.rotation);
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.clearRect(0, 0, this.w, this.h);

    // Sphere, graticule, land, borders.
    ctx.beginPath();
    this.path({ type: "Sphere" });
    ctx.fillStyle = "#0c1a2e";
    ctx.fill();
    ctx.beginPath();
    this.path(this.graticule);
    ctx.strokeStyle = "rgba(140,170,220,0.12)";
    ctx.lineWidth = 0.5;
    ctx.stroke();
    ctx.beginPath();
    this.path(this.land);
    ctx.fillStyle = "#1f3550";
    ctx.fill();
    ctx.beginPath();
    this.path(this.borders);
    ctx.strokeStyle = "rgba(150,180,220,0.35)";
    ctx.stroke();
    ctx.beginPath();
    this.path({ type: "Sphere" });
    ctx.strokeStyle = "rgba(150,180,220,0.5)";
    ctx.lineWidth = 1;
    ctx.stroke();

    // The unplaced ring.
    ctx.beginPath();
    ctx.arc(this.w / 2, this.h / 2, this.r * 1.13, 0, 2 * Math.PI);
    ctx.setLineDash([2, 6]);
    ctx.strokeStyle = "rgba(150,180,220,0.35)";
    ctx.stroke();
    ctx.setLineDash([]);

    const place = this.placer(state);
    const organiserId = state.round?.organiser;
    const origin = organiserId && organiserId !== "coordinator" ? place(state.nodes.get(organiserId)) : this.coordinatorPoint();

    // Arcs: the model going out (orange), updates coming back (green).
    const flashing = new Map();
    this.arcs = this.arcs.filter((a) => now - a.start < FLASH_MS);
    ctx.lineWidth = 1.2;
    for (const a of this.arcs) {
      const n = state.nodes.get(a.node);
      const p = place(n);
      if (!p || !origin) continue;
      const k = (now - a.start) / FLASH_MS;
      flashing.set(a.node, a.dir === "down" ? "receiving" : "sending");
      const [from, to] = a.dir === "down" ? [origin, p] : [p, origin];
      const pts = this.arcPoints(state, a, from, to);
      if (!pts) continue;
      const head = Math.max(1, Math.round(k * (pts.length - 1)));
      ctx.beginPath();
      ctx.moveTo(pts[0][0], pts[0][1]);
      for (let i = 1; i <= head; i++) ctx.lineTo(pts[i][0], pts[i][1]);
      ctx.strokeStyle = a.dir === "down" ? "rgba(255,159,28,0.75)" : "rgba(61,220,132,0.75)";
      ctx.stroke();
      ctx.fillStyle = a.dir === "down" ? COLORS.receiving : COLORS.sending;
      ctx.fillRect(pts[head][0] - 2, pts[head][1] - 2, 4, 4);
    }

    // Nodes, batched by colour.
    const batches = new Map();
    let drawn = 0, points = 0;
    const shown = []; // [id, x, y, state] of the visible points, for tests
    for (const n of state.nodes.values()) {
      const p = place(n);
      points++;
      if (!p.visible) continue;
      let st = n.id === organiserId ? "organiser" : n.state;
      st = flashing.get(n.id) || st;
      let b = batches.get(st);
      if (!b) batches.set(st, (b = []));
      b.push(p.x, p.y);
      shown.push([n.id, p.x, p.y, st]);
      drawn++;
    }
    for (const [st, b] of batches) {
      ctx.fillStyle = COLORS[st] || COLORS.idle;
      const s = st === "idle" ? 3 : 4;
      for (let i = 0; i < b.length; i += 2) ctx.fillRect(b[i] - s / 2, b[i + 1] - s / 2, s, s);
    }
    if (!organiserId || organiserId === "coordinator") {
      const c = this.coordinatorPoint();
      ctx.fillStyle = COLORS.organiser;
      ctx.beginPath();
      ctx.moveTo(c.x, c.y - 7);
      ctx.lineTo(c.x + 7, c.y);
      ctx.lineTo(c.x, c.y + 7);
      ctx.lineTo(c.x - 7, c.y);
      ctx.fill();
    }
    this.drawn = drawn; // points in view (front of the globe, or on the ring)
    this.points = points; // every node placed this frame, hidden side included
    this.shown = shown;
    this.stats.frames++;
    const ms = performance.now() - t0;
    this.stats.drawMs.push(ms);
    if (this.stats.drawMs.length > 600) this.stats.drawMs.shift();
  }

  // arcPoints samples an arc: a great circle between two placed ends,
  // else a straight line.
  arcPoints(state, a, from, to) {
    const n = state.nodes.get(a.node);
    const org = state.round?.organiser;
    const o = org && org !== "coordinator" ? state.nodes.get(org) : null;
    if (n?.placed && o?.placed) {
      const interp = geoInterpolate([o.lon, o.lat], [n.lon, n.lat]);
      const pts = [];
      for (let i = 0; i <= 16; i++) {
        const q = a.dir === "down" ? i / 16 : 1 - i / 16;
        const xy = this.projection(interp(q));
        if (xy) pts.push(xy);
      }
      return pts.length > 1 ? pts : null;
    }
    const pts = [];
    for (let i = 0; i <= 16; i++) pts.push([from.x + ((to.x - from.x) * i) / 16, from.y + ((to.y - from.y) * i) / 16]);
    return pts;
  }
}
