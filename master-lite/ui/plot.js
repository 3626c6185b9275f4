// Small SVG line plots of a node's recent usage: no library, a few dozen lines.

import { h, svg } from './dom.js';

const W = 600;
const H = 160;
const PAD = { left: 66, right: 10, top: 10, bottom: 22 };

/**
 * A figure with one line per series over time.
 * series: [{name, points: [[timeMs, value], …], tone}], tone one of 1–3 (colours in style.css).
 * yMax: the top of the axis (the largest value when absent); format: a value as axis text.
 */
export function plot({ title, series, yMax, format = String, id }) {
  const points = series.flatMap((s) => s.points);
  const count = Math.max(0, ...series.map((s) => s.points.length));
  const figure = h('figure', { class: 'plot', id, 'data-points': count });
  figure.append(h('figcaption', {}, title));
  if (count === 0) {
    figure.append(h('p', { class: 'muted' }, 'No samples yet: they come with the node\u2019s status reports.'));
    return figure;
  }
  const times = points.map((p) => p[0]);
  const t0 = Math.min(...times);
  const t1 = Math.max(...times, t0 + 1000);
  const top = yMax ?? Math.max(...points.map((p) => p[1]), 1e-9);
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (Math.min(v, top) / top) * (H - PAD.top - PAD.bottom);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}: ${describe(series, format)}` });
  for (const v of [0, top / 2, top]) {
    chart.append(svg('line', { class: 'grid', x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }));
    chart.append(svg('text', { class: 'axis', x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, format(v)));
  }
  chart.append(svg('text', { class: 'axis', x: PAD.left, y: H - 4 }, new Date(t0).toLocaleTimeString()));
  chart.append(svg('text', { class: 'axis', x: W - PAD.right, y: H - 4, 'text-anchor': 'end' }, new Date(t1).toLocaleTimeString()));
  for (const s of series) {
    if (!s.points.length) continue;
    const line = s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    chart.append(svg('polyline', { class: `line tone${s.tone || 1}`, points: line, 'data-series': s.name }));
    if (s.points.length < 30) {
      for (const [t, v] of s.points) chart.append(svg('circle', { class: `dot tone${s.tone || 1}`, cx: x(t), cy: y(v), r: 2.5 }));
    }
  }
  figure.append(chart);
  if (series.length > 1) {
    figure.append(h('ul', { class: 'legend' }, series.map((s) => h('li', { class: `tone${s.tone || 1}` }, s.name))));
  }
  return figure;
}

/** The last value of each series, for screen readers. */
function describe(series, format) {
  return series
    .filter((s) => s.points.length)
    .map((s) => `${s.name} now ${format(s.points[s.points.length - 1][1])}`)
    .join(', ');
}
