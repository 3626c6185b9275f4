// Building the page: elements from data, text always as text (never parsed as HTML).

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(element, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') element.addEventListener(key.slice(2), value);
    else if (key === 'class') element.setAttribute('class', value);
    else element.setAttribute(key, value === true ? '' : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: `h('a', {href: '#/'}, 'text', child)`. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function svg(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replaces the children of `element`. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A link to a page of the dashboard. */
export function link(path, text) {
  return h('a', { href: '#' + path.split('/').map((p, i) => (i ? encodeURIComponent(p) : p)).join('/') }, text);
}

/** A table: headings and rows of cells (strings or nodes); `empty` when there are no rows. */
export function table(headings, rows, empty = 'None.') {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('div', { class: 'scroll' },
    h('table', {},
      h('thead', {}, h('tr', {}, headings.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.map((row) => {
        const attrs = row.attrs || {};
        return h('tr', attrs, (row.cells || row).map((c) => h('td', {}, c)));
      }))));
}

/** A description list of [term, value] pairs. */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v === '' || v == null ? '—' : v)]));
}

export function section(title, ...children) {
  return h('section', { class: 'card' }, h('h2', {}, title), children);
}

const UNITS = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };

/** Bytes of a quantity as the API writes it (`512Mi`, `1G`, `1048576`). */
export function parseBytes(text) {
  const m = /^([0-9.]+)\s*([A-Za-z]*)$/.exec(String(text ?? '').trim());
  if (!m) return 0;
  return Number(m[1]) * (UNITS[m[2]] || 1);
}

/** Millicores of a CPU quantity (`500m`, `2`). */
export function parseCpu(text) {
  const m = /^([0-9.]+)(m?)$/.exec(String(text ?? '').trim());
  if (!m) return 0;
  return m[2] ? Number(m[1]) : Number(m[1]) * 1000;
}

export function bytes(n) {
  if (!Number.isFinite(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

export function percent(part, whole) {
  return whole > 0 ? `${Math.round((100 * part) / whole)}%` : '—';
}

/** How long ago `time` was, short: `5s`, `3m`, `2h`, `4d`. */
export function age(time) {
  if (!time) return '—';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(time)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

export function clock(time) {
  return time ? new Date(time).toLocaleTimeString() : '—';
}
