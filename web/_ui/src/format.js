// Number formatting for the panel: SI prefixes, binary bytes.

export function num(x, digits) {
  if (x == null || !Number.isFinite(x)) return "–";
  return x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function si(x, unit, prefixes) {
  if (x == null || !Number.isFinite(x)) return "–";
  let i = 0;
  while (i < prefixes.length - 1 && Math.abs(x) >= 1000) {
    x /= 1000;
    i++;
  }
  return `${num(x, Math.abs(x) < 10 && i > 0 ? 2 : i > 0 ? 1 : 0)} ${prefixes[i]}${unit}`;
}

// flops: 1.2e15 -> "1.20 PFLOP" (the caller adds "/s" for a rate).
export const flops = (x) => si(x, "FLOP", ["", "k", "M", "G", "T", "P", "E", "Z"]);

export function bytes(n) {
  if (n == null || !Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (i < units.length - 1 && n >= 1024) {
    n /= 1024;
    i++;
  }
  return `${num(n, i ? 1 : 0)} ${units[i]}`;
}

// energy takes kWh.
export function energy(kwh) {
  if (kwh == null || !Number.isFinite(kwh)) return "–";
  if (kwh < 1) return `${num(kwh * 1000, kwh * 1000 < 10 ? 2 : 1)} Wh`;
  return si(kwh * 1000, "Wh", ["", "k", "M", "G", "T"]);
}

// co2 takes kg.
export function co2(kg) {
  if (kg == null || !Number.isFinite(kg)) return "–";
  if (kg < 1) return `${num(kg * 1000, 1)} g`;
  if (kg < 1000) return `${num(kg, 1)} kg`;
  return `${num(kg / 1000, 1)} t`;
}
