// Small DOM and formatting helpers shared by the page's modules.

const SVG_NS = 'http://www.w3.org/2000/svg';

/** An SVG element with attributes (values set as given) and children. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  node.append(...children);
  return node;
}

/** An HTML element with attributes (class via "class") and children (text or nodes). */
export function html(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(key, String(value));
  }
  node.append(...children);
  return node;
}

const whole = new Intl.NumberFormat('en');
const tenths = new Intl.NumberFormat('en', { minimumFractionDigits: 1, maximumFractionDigits: 1 });

/** 12345 -> "12,345"; null/undefined -> "—". */
export function count(n) {
  return n === null || n === undefined ? '—' : whole.format(n);
}

/** 1234 -> "1.2k", 2500000 -> "2.5M": for labels inside map markers. */
export function short(n) {
  if (n < 1000) return String(Math.round(n));
  if (n < 1e6) return `${tenths.format(n / 1e3).replace(/\.0$/, '')}k`;
  return `${tenths.format(n / 1e6).replace(/\.0$/, '')}M`;
}

/** A rate in requests per second, one decimal. */
export function rate(n) {
  return n === null || n === undefined ? '—' : `${tenths.format(n)}/s`;
}

/** Seconds -> "4 s", "3 min", "2 h 5 min", "3 d". */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d`;
}
