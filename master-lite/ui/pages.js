// The pages. Each is `(element, name, ctx) => leave`: it fills `element` from
// the collections it follows and returns what ends its watches and streams.
// Strings from the API go into the page as text only (dom.js), never as HTML.

import { call, follow, request } from './api.js';
import { age, bytes, clock, facts, fill, h, link, parseBytes, parseCpu, percent, section, table } from './dom.js';
import { plot } from './plot.js';

const PRESSURES = ['MemoryPressure', 'DiskPressure', 'PIDPressure', 'NetworkUnavailable'];

/** The page for `path` (`/nodes/NAME`…) rendered into `element`; returns its leave function. */
export function route(path, element, ctx) {
  const [, section, name] = path.split('/');
  const pages = { '': overview, nodes: name ? node : nodes, workloads: name ? workload : workloads, instances: name ? instance : instances, events };
  const page = pages[section || ''];
  if (!page) {
    element.append(h('h1', {}, 'Not found'), h('p', {}, 'No such page. '), link('/', 'Back to the overview'));
    return () => {};
  }
  return page(element, name, ctx);
}

// ---- facts about objects -------------------------------------------------

function condition(node, type) {
  return (node.status?.conditions || []).find((c) => c.type === type);
}

/** `True`, `False` or `Unknown`: whether the node is Ready. */
function readiness(node) {
  return condition(node, 'Ready')?.status || 'Unknown';
}

function readyBadge(node) {
  const ready = readiness(node);
  const text = ready === 'True' ? 'Ready' : ready === 'False' ? 'NotReady' : 'NotReady (Unknown)';
  const badges = [h('span', { class: `badge ${ready === 'True' ? 'good' : 'bad'}`, 'data-ready': ready }, text)];
  if (node.spec?.unschedulable) badges.push(' ', h('span', { class: 'badge warn' }, 'SchedulingDisabled'));
  return badges;
}

function pressures(node) {
  return PRESSURES.filter((t) => condition(node, t)?.status === 'True');
}

function workloadHealth(w) {
  const s = w.status || {};
  if ((s.conditions || []).some((c) => c.type === 'Invalid' && c.status === 'True')) return ['Invalid', 'bad'];
  if (w.spec.type === 'job') return s.succeeded >= (s.desired || 0) ? ['Complete', 'good'] : s.failed ? ['Failing', 'bad'] : ['Running', 'warn'];
  if ((s.ready || 0) >= (s.desired || 0)) return ['Healthy', 'good'];
  return [(s.ready || 0) === 0 ? 'Unavailable' : 'Degraded', (s.ready || 0) === 0 ? 'bad' : 'warn'];
}

function phaseBadge(phase) {
  const tone = { Running: 'good', Succeeded: 'good', Pending: 'warn', Starting: 'warn', Terminating: 'warn', Failed: 'bad', Lost: 'bad' }[phase] || '';
  return h('span', { class: `badge ${tone}` }, phase);
}

function since(time) {
  return h('span', { 'data-since': time || '' }, age(time));
}

/** What a node's instances ask for: millicores, bytes and count. */
function allocated(nodeName, instances, workloadsByName) {
  let cpu = 0;
  let memory = 0;
  let count = 0;
  for (const i of instances) {
    if (i.spec.node !== nodeName || !['Pending', 'Starting', 'Running', 'Terminating'].includes(i.status?.phase)) continue;
    const requests = workloadsByName.get(i.spec.workload)?.spec?.resources?.requests || {};
    cpu += parseCpu(requests.cpu);
    memory += parseBytes(requests.memory);
    count += 1;
  }
  return { cpu, memory, count };
}

function meter(used, total, label) {
  const share = total > 0 ? Math.min(1, used / total) : 0;
  const bar = h('span', { class: 'meter', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(share * 100), 'aria-label': label });
  const fillBar = h('span', { class: share > 0.9 ? 'over' : '' });
  fillBar.style.width = `${(share * 100).toFixed(1)}%`;
  bar.append(fillBar);
  return bar;
}

function byName(items) {
  return new Map(items.map((i) => [i.metadata.name, i]));
}

function eventsTable(list, empty = 'No events.') {
  const rows = list.map((e) => ({
    attrs: { class: e.type === 'Warning' ? 'warning' : '', 'data-reason': e.reason },
    cells: [clock(e.time), h('span', { class: `badge ${e.type === 'Warning' ? 'bad' : ''}` }, e.type), e.reason, objectLink(e.involvedObject), e.message, e.source],
  }));
  return table(['Time', 'Type', 'Reason', 'Object', 'Message', 'Source'], rows, empty);
}

function objectLink(ref) {
  if (!ref) return '—';
  const path = { Node: 'nodes', Workload: 'workloads', Instance: 'instances' }[ref.kind];
  return path ? link(`/${path}/${ref.name}`, `${ref.kind}/${ref.name}`) : `${ref.kind}/${ref.name}`;
}

function newestFirst(events) {
  return [...events].sort((a, b) => Date.parse(b.time) - Date.parse(a.time));
}

function heading(element, title, ...rest) {
  element.append(h('h1', {}, title, ...rest));
}

/** Runs an admin action from a button: disables it, tells the outcome. */
async function act(button, ctx, what, run) {
  button.disabled = true;
  try {
    const answer = await run();
    ctx.toast(`${what}: done`);
    return answer;
  } catch (error) {
    ctx.toast(`${what}: ${error.message}`, true);
    return null;
  } finally {
    button.disabled = false;
  }
}

// ---- overview -----------------------------------------------------------

function overview(element) {
  heading(element, 'Cluster');
  const body = h('div', { class: 'grid' });
  element.append(body);
  let marked = false;
  return follow(['nodes', 'workloads', 'events'], ({ nodes: ns, workloads: ws, events: es }) => {
    const ready = ns.filter((n) => readiness(n) === 'True');
    const notReady = ns.filter((n) => readiness(n) !== 'True');
    const pressured = ns.filter((n) => pressures(n).length);
    const health = new Map();
    for (const w of ws) {
      const [state] = workloadHealth(w);
      health.set(state, (health.get(state) || 0) + 1);
    }
    const warnings = newestFirst(es.filter((e) => e.type === 'Warning')).slice(0, 10);
    fill(body,
      section('Nodes',
        h('p', { class: 'big' }, h('span', { class: 'good', id: 'nodes-ready' }, String(ready.length)), ' Ready'),
        h('p', { class: 'big' }, h('span', { class: notReady.length ? 'bad' : 'muted', id: 'nodes-not-ready' }, String(notReady.length)), ' NotReady'),
        h('p', {}, `${pressured.length} under pressure`),
        notReady.length ? h('ul', { class: 'plain' }, notReady.map((n) => h('li', { class: 'bad' }, link(`/nodes/${n.metadata.name}`, n.metadata.name)))) : null,
        link('/nodes', 'All nodes')),
      section('Workloads',
        h('p', { class: 'big' }, String(ws.length), ' workloads'),
        h('ul', { class: 'plain' }, [...health].map(([state, n]) => h('li', {}, `${n} ${state}`))),
        link('/workloads', 'All workloads')),
      h('section', { class: 'card wide' }, h('h2', {}, 'Recent warnings'), eventsTable(warnings, 'No warnings.'), link('/events', 'All events')));
    // When the cluster first showed, for anyone measuring the page (User Timing).
    if (!marked) performance.mark('wasmlet-overview-shown');
    marked = true;
  });
}

// ---- nodes --------------------------------------------------------------

function nodeActions(n, ctx) {
  if (!ctx.admin) return '';
  const name = n.metadata.name;
  const cordon = h('button', { type: 'button', class: 'admin-action', 'data-action': n.spec?.unschedulable ? 'uncordon' : 'cordon' }, n.spec?.unschedulable ? 'Uncordon' : 'Cordon');
  cordon.addEventListener('click', () => {
    const verb = n.spec?.unschedulable ? 'uncordon' : 'cordon';
    act(cordon, ctx, `${verb} ${name}`, () => call('POST', `/nodes/${encodeURIComponent(name)}/${verb}`));
  });
  const drain = h('button', { type: 'button', class: 'admin-action danger', 'data-action': 'drain' }, 'Drain');
  drain.addEventListener('click', async () => {
    const sure = await ctx.confirm(`Drain ${name}?`, `No new instances go to ${name}, and each of its instances is replaced on another node, then stopped here.`, 'Drain');
    if (!sure) return;
    ctx.toast(`Draining ${name}…`);
    const answer = await act(drain, ctx, `drain ${name}`, () => call('POST', `/nodes/${encodeURIComponent(name)}/drain`));
    if (answer) ctx.toast(answer.complete ? `${name} drained: ${answer.moved.length} instance(s) moved` : `${name}: ${answer.remaining.length} instance(s) not moved yet`, !answer.complete);
  });
  return h('span', { class: 'actions' }, cordon, ' ', drain);
}

function nodes(element, _name, ctx) {
  heading(element, 'Nodes');
  const body = h('div');
  element.append(body);
  return follow(['nodes', 'instances', 'workloads'], ({ nodes: ns, instances: is, workloads: ws }) => {
    const wmap = byName(ws);
    const rows = ns.map((n) => {
      const alloc = allocated(n.metadata.name, is, wmap);
      const cap = n.status?.allocatable || {};
      const cpuCap = parseCpu(cap.cpu);
      const memCap = parseBytes(cap.memory);
      return {
        attrs: { 'data-node': n.metadata.name, 'data-ready': readiness(n), class: readiness(n) === 'True' ? '' : 'bad-row' },
        cells: [
          link(`/nodes/${n.metadata.name}`, n.metadata.name),
          readyBadge(n),
          pressures(n).map((p) => h('span', { class: 'badge bad' }, p)),
          [meter(alloc.cpu, cpuCap, 'CPU requested'), ` ${alloc.cpu}m / ${cpuCap}m`],
          [meter(alloc.memory, memCap, 'memory requested'), ` ${bytes(alloc.memory)} / ${bytes(memCap)}`],
          `${alloc.count} / ${cap.instances ?? '—'}`,
          h('span', { class: 'kernel' }, n.status?.nodeInfo?.kernelVersion || '—'),
          since(n.metadata.creationTimestamp),
          nodeActions(n, ctx),
        ],
      };
    });
    fill(body, table(['Name', 'Status', 'Pressure', 'CPU requested', 'Memory requested', 'Instances', 'Kernel', 'Age', ctx.admin ? 'Actions' : ''], rows, 'No nodes have joined yet.'));
  });
}

function node(element, name, ctx) {
  heading(element, 'Node ', h('span', { class: 'name' }, name));
  const head = h('div');
  const plots = h('section', { class: 'card wide', id: 'plots' }, h('h2', {}, 'Last hour'), h('p', { class: 'muted' }, 'Loading…'));
  const top = h('div');
  const rest = h('div');
  element.append(head, plots, top, rest);
  let drawn; // the sample time the plots show
  let fetching = false;
  let wanted = null;
  const stop = new AbortController();

  // The history is read again when the node's status moves on (the nodes watch says so): no timer.
  async function refreshPlots(sampleTime) {
    wanted = sampleTime;
    if (fetching || wanted === drawn) return;
    fetching = true;
    drawn = wanted;
    try {
      const history = await call('GET', `/nodes/${encodeURIComponent(name)}/usage-history`, { signal: stop.signal });
      const samples = history.samples;
      const t = (s) => Date.parse(s.time);
      const pct = (v) => `${Math.round(v)}%`;
      const psi = (key) => samples.filter((s) => s[key] !== undefined).map((s) => [t(s), s[key]]);
      fill(plots, h('h2', {}, 'Last hour'),
        h('div', { class: 'plots' },
          plot({ id: 'plot-cpu', title: 'CPU busy', series: [{ name: 'cpu', points: samples.map((s) => [t(s), s.cpuPercent]) }], yMax: 100, format: pct }),
          plot({
            id: 'plot-memory', title: 'Memory used',
            series: [{ name: 'memory', points: samples.map((s) => [t(s), s.memoryUsedBytes]), tone: 2 }],
            yMax: Math.max(1, ...samples.map((s) => s.memoryTotalBytes)), format: bytes,
          }),
          plot({
            id: 'plot-pressure', title: 'Pressure (PSI some avg10)',
            series: [{ name: 'cpu', points: psi('cpuPressure'), tone: 1 }, { name: 'memory', points: psi('memoryPressure'), tone: 2 }, { name: 'io', points: psi('ioPressure'), tone: 3 }],
            yMax: Math.max(1, ...samples.flatMap((s) => [s.cpuPressure || 0, s.memoryPressure || 0, s.ioPressure || 0])), format: pct,
          })),
        h('p', { class: 'muted' }, `${samples.length} sample(s) kept by this master, one per status report (at most ${history.maxSamples}, ${history.windowSeconds / 60} minutes).`));
    } catch (error) {
      if (!stop.signal.aborted) fill(plots, h('h2', {}, 'Last hour'), h('p', { class: 'error' }, `Cannot read the usage history: ${error.message}`));
    } finally {
      fetching = false;
    }
    if (wanted !== drawn && !stop.signal.aborted) refreshPlots(wanted);
  }

  const unfollow = follow(['nodes', 'instances', 'workloads', 'events'], ({ nodes: ns, instances: is, workloads: ws, events: es }) => {
    const n = ns.find((x) => x.metadata.name === name);
    if (!n) {
      fill(head, h('p', { class: 'error' }, `Node ${name} does not exist (any more). `, link('/nodes', 'All nodes')));
      fill(top);
      fill(rest);
      return;
    }
    const st = n.status || {};
    const info = st.nodeInfo || {};
    const wmap = byName(ws);
    const alloc = allocated(name, is, wmap);
    const cap = st.allocatable || {};
    const ready = condition(n, 'Ready');
    fill(head, h('div', { class: 'row', 'data-node': name, 'data-ready': readiness(n) }, readyBadge(n), ' ', nodeActions(n, ctx)));
    fill(top,
      h('div', { class: 'grid' },
        section('Node',
          facts([
            ['Labels', Object.entries(n.metadata.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ')],
            ['Annotations', Object.entries(n.metadata.annotations || {}).map(([k, v]) => `${k}=${v}`).join(', ')],
            ['Taints', (n.spec?.taints || []).map((t) => `${t.key}${t.value ? '=' + t.value : ''}:${t.effect}`).join(', ')],
            ['Unschedulable', String(!!n.spec?.unschedulable)],
            ['Created', clock(n.metadata.creationTimestamp)],
            ['Lease renewed', clock(ready?.lastHeartbeatTime)],
            ['Addresses', (st.addresses || []).map((a) => `${a.type}: ${a.address}`).join(', ')],
          ])),
        section('System info',
          facts([
            ['Kernel Version', h('span', { class: 'kernel' }, info.kernelVersion || '—')],
            ['OS Image', info.osImage], ['Operating System', info.operatingSystem], ['Architecture', info.architecture],
            ['CPU Model', info.cpuModel], ['Machine ID', info.machineID || info.machineId], ['Boot ID', info.bootID || info.bootId],
            ['Agent Version', info.agentVersion], ['Runtime Version', info.runtimeVersion ? `wasmtime/${info.runtimeVersion}` : ''],
            ...(st.runtime ? [
              ['Allocator', `${st.runtime.allocator} (${st.runtime.allocatorReason})`],
              ['Compiler', st.runtime.compiler ? `${st.runtime.compiler} (${st.runtime.compilerReason})` : ''],
              ['Isolation', `${(st.runtime.isolation || []).join(', ')}${st.runtime.defaultIsolation ? ` (default ${st.runtime.defaultIsolation})` : ''}`],
            ] : []),
          ])),
        h('section', { class: 'card span2' }, h('h2', {}, 'Capacity and requests'),
          table(['Resource', 'Capacity', 'Allocatable', 'Requested'], [
            ['cpu', st.capacity?.cpu ?? '—', cap.cpu ?? '—', [meter(alloc.cpu, parseCpu(cap.cpu), 'CPU requested'), ` ${alloc.cpu}m (${percent(alloc.cpu, parseCpu(cap.cpu))})`]],
            ['memory', bytes(parseBytes(st.capacity?.memory)), bytes(parseBytes(cap.memory)), [meter(alloc.memory, parseBytes(cap.memory), 'memory requested'), ` ${bytes(alloc.memory)} (${percent(alloc.memory, parseBytes(cap.memory))})`]],
            ['ephemeral-storage', bytes(parseBytes(st.capacity?.ephemeralStorage)), bytes(parseBytes(cap.ephemeralStorage)), ''],
            ['instances', String(st.capacity?.instances ?? '—'), String(cap.instances ?? '—'), `${alloc.count}`],
          ])),
        section('Usage now', usageFacts(st.usage))),
      section('Conditions', table(['Type', 'Status', 'Last heartbeat', 'Last transition', 'Reason', 'Message'],
        (st.conditions || []).map((c) => ({
          attrs: { 'data-condition': c.type, class: (c.type === 'Ready') !== (c.status === 'True') ? 'bad-row' : '' },
          cells: [c.type, c.status, clock(c.lastHeartbeatTime), clock(c.lastTransitionTime), c.reason, c.message],
        })))));
    const mine = is.filter((i) => i.spec.node === name);
    fill(rest,
      section('Instances', instancesTable(mine, es)),
      section('Events', eventsTable(newestFirst(es.filter((e) => e.involvedObject?.kind === 'Node' && e.involvedObject?.name === name)).slice(0, 50))));
    refreshPlots(st.usage?.sampleTime || null);
  });
  return () => {
    stop.abort();
    unfollow();
  };
}

function usageFacts(u) {
  if (!u) return h('p', { class: 'muted' }, 'Not reported yet.');
  const p = u.pressure || {};
  const psi = (r) => (r ? `${r.some.avg10.toFixed(1)}% / ${r.some.avg60.toFixed(1)}% (avg10 / avg60)` : '—');
  return facts([
    ['Sampled', clock(u.sampleTime)],
    ['CPU busy', `${u.cpuPercent.toFixed(1)}%`],
    ['Memory', `${bytes(u.memory.usedBytes)} used of ${bytes(u.memory.totalBytes)}, ${bytes(u.memory.availableBytes)} available`],
    ['Disk', `${bytes(u.disk.usedBytes)} used of ${bytes(u.disk.totalBytes)} (${u.disk.path})`],
    ['PIDs', `${u.pids.used} of ${u.pids.max}`],
    ['CPU pressure', p.available ? psi(p.cpu) : p.reason || 'not available'],
    ['Memory pressure', p.available ? psi(p.memory) : '—'],
    ['IO pressure', p.available ? psi(p.io) : '—'],
  ]);
}

// ---- workloads ----------------------------------------------------------

function workloadActions(w, ctx) {
  if (!ctx.admin) return '';
  const name = w.metadata.name;
  const path = `/workloads/${encodeURIComponent(name)}`;
  const buttons = [];
  if (w.spec.placement !== 'everyNode' && w.spec.type !== 'job') {
    const scale = h('button', { type: 'button', class: 'admin-action', 'data-action': 'scale' }, 'Scale');
    scale.addEventListener('click', async () => {
      const input = h('input', { type: 'number', min: 0, step: 1, id: 'scale-replicas', value: w.spec.replicas ?? 1, 'aria-label': 'Replicas' });
      const extra = h('label', { for: 'scale-replicas' }, 'Replicas ', input);
      if (!(await ctx.confirm(`Scale ${name}?`, `Set the number of replicas of ${name}.`, 'Scale', extra))) return;
      const replicas = Number(input.value);
      if (!Number.isInteger(replicas) || replicas < 0) return ctx.toast('Replicas must be a whole number, 0 or more', true);
      await act(scale, ctx, `scale ${name} to ${replicas}`, async () => {
        const current = await call('GET', path);
        current.spec.replicas = replicas;
        delete current.status;
        return call('PUT', path, { body: current }); // carries resourceVersion: a change in between is a conflict
      });
    });
    buttons.push(scale, ' ');
  }
  const remove = h('button', { type: 'button', class: 'admin-action danger', 'data-action': 'delete' }, 'Delete');
  remove.addEventListener('click', async () => {
    if (!(await ctx.confirm(`Delete ${name}?`, `The workload ${name} and all its instances are removed. This cannot be undone.`, 'Delete'))) return;
    await act(remove, ctx, `delete ${name}`, () => call('DELETE', path));
  });
  buttons.push(remove);
  return h('span', { class: 'actions' }, buttons);
}

function workloads(element, _name, ctx) {
  heading(element, 'Workloads');
  const body = h('div');
  element.append(body);
  return follow(['workloads'], ({ workloads: ws }) => {
    const rows = ws.map((w) => {
      const [state, tone] = workloadHealth(w);
      const s = w.status || {};
      return {
        attrs: { 'data-workload': w.metadata.name, 'data-health': state },
        cells: [
          link(`/workloads/${w.metadata.name}`, w.metadata.name), w.spec.type,
          w.spec.placement === 'everyNode' ? `every node (${s.desired ?? 0})` : String(s.desired ?? w.spec.replicas ?? 1),
          String(s.ready ?? 0), h('span', { class: `badge ${tone}` }, state),
          rolloutBadge(s.rollout),
          since(w.metadata.creationTimestamp), workloadActions(w, ctx),
        ],
      };
    });
    fill(body, table(['Name', 'Type', 'Desired', 'Ready', 'Health', 'Rollout', 'Age', ctx.admin ? 'Actions' : ''], rows, 'No workloads.'));
  });
}

function workload(element, name, ctx) {
  heading(element, 'Workload ', h('span', { class: 'name' }, name));
  const body = h('div');
  element.append(body);
  return follow(['workloads', 'instances', 'events'], ({ workloads: ws, instances: is, events: es }) => {
    const w = ws.find((x) => x.metadata.name === name);
    if (!w) return fill(body, h('p', { class: 'error' }, `Workload ${name} does not exist (any more). `, link('/workloads', 'All workloads')));
    const s = w.status || {};
    const [state, tone] = workloadHealth(w);
    const spec = w.spec;
    const mine = is.filter((i) => i.spec.workload === name);
    const mineNames = new Set(mine.map((i) => i.metadata.name));
    fill(body,
      h('div', { class: 'row' }, h('span', { class: `badge ${tone}` }, state), ' ', workloadActions(w, ctx)),
      h('div', { class: 'grid' },
        section('Spec', facts([
          ['Type', spec.type], ['Module', spec.module?.source], ['Digest', spec.module?.digest],
          ['Placement', spec.placement === 'everyNode' ? 'every node' : `${spec.replicas ?? 1} replica(s)`],
          ['Requests', `cpu ${spec.resources?.requests?.cpu ?? '—'}, memory ${spec.resources?.requests?.memory ?? '—'}`],
          ['Restart policy', spec.restartPolicy], ['Route', spec.route ? [spec.route.host, spec.route.pathPrefix].filter(Boolean).join(' ') : ''],
        ])),
        section('Replicas', facts([['Desired', String(s.desired ?? 0)], ['Ready', String(s.ready ?? 0)], ['Running', String(s.running ?? 0)], ['Succeeded', String(s.succeeded ?? 0)], ['Failed', String(s.failed ?? 0)]])),
        rolloutSection(s.rollout)),
      section('Instances', instancesTable(mine, es)),
      section('Events', eventsTable(newestFirst(es.filter((e) => (e.involvedObject?.kind === 'Workload' && e.involvedObject?.name === name)
        || (e.involvedObject?.kind === 'Instance' && mineNames.has(e.involvedObject?.name)))).slice(0, 50))));
  });
}

// ---- rollouts -----------------------------------------------------------

/** Whether a rollout takes steps now (Canary or Waves, progressing or paused). */
function stepping(r) {
  return r && r.strategy && (r.phase === 'Progressing' || r.phase === 'Paused');
}

/** A rollout in a few words: the step under way and its weight, a rollback, or the revision. */
function rolloutBadge(r) {
  if (!r) return h('span', { class: 'rollout', 'data-rollout': 'none' }, '—');
  const step = `${r.strategy === 'Waves' ? 'wave' : 'step'} ${(r.step ?? 0) + 1}/${(r.stepCount ?? 0) + 1}`;
  const [text, tone] = stepping(r)
    ? [`${r.strategy} ${step}${r.strategy === 'Canary' ? `, ${r.weight}%` : ''}${r.phase === 'Paused' ? ', paused' : ''}`, 'warn']
    : r.phase === 'RolledBack' ? [`rolled back to rev ${r.revision}`, 'bad'] : [`rev ${r.revision}`, 'good'];
  return h('span', { class: `rollout badge ${tone}`, 'data-rollout': r.phase }, text);
}

/** The rollout: where it is, its traffic split, its gates' readings and the history of revisions. */
function rolloutSection(r) {
  if (!r) return h('section', { class: 'card', id: 'rollout', 'data-rollout': 'none' }, h('h2', {}, 'Rollout'),
    h('p', { class: 'muted' }, 'No record yet: the workload gets one when its spec changes.'));
  const pairs = [['Revision', String(r.revision)], ['Strategy', r.strategy || 'one replica at a time'], ['Phase', rolloutBadge(r)]];
  if (stepping(r)) {
    pairs.push(['Step', `${(r.step ?? 0) + 1} of ${(r.stepCount ?? 0) + 1}`]);
    if (r.strategy === 'Canary') {
      pairs.push(['Traffic', `${r.weight}% to revision ${r.revision}, ${100 - r.weight}% to revision ${r.previous?.revision ?? '?'}`]);
    }
  }
  pairs.push(['Message', r.message || '']);
  const gates = (r.gates || []).map((g) => ({
    attrs: { 'data-gate': g.gate },
    cells: [g.gate, g.value, g.limit, h('span', { class: `badge ${g.passed ? 'good' : 'bad'}` }, g.passed ? 'holds' : 'failed')],
  }));
  const history = [...(r.history || [])].reverse().map((v) => [String(v.revision), v.digest.replace(/^(sha256:.{12}).*$/, '$1…'),
    v.module || '', v.outcome, age(v.at), v.message || '']);
  return h('section', { class: 'card', id: 'rollout', 'data-rollout': r.phase }, h('h2', {}, 'Rollout'), facts(pairs),
    h('h3', {}, 'Gates'), table(['Gate', 'Value', 'Limit', ''], gates, 'No gate read yet.'),
    h('h3', {}, 'History'), table(['Revision', 'Digest', 'Module', 'Outcome', 'Age', 'Message'], history, 'No revisions.'));
}

// ---- instances ----------------------------------------------------------

/** Instances with where they run; a Lost one the master replaced says so (its HandedOff event). */
function instancesTable(list, events) {
  const handedOff = new Set(events.filter((e) => e.reason === 'HandedOff' && e.involvedObject?.kind === 'Instance').map((e) => e.involvedObject.name));
  const rows = [...list].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name)).map((i) => {
    const phase = i.status?.phase || 'Pending';
    const off = handedOff.has(i.metadata.name);
    return {
      attrs: { 'data-instance': i.metadata.name, 'data-phase': phase, 'data-node': i.spec.node, 'data-handed-off': off ? 'true' : 'false' },
      cells: [
        link(`/instances/${i.metadata.name}`, i.metadata.name), link(`/workloads/${i.spec.workload}`, i.spec.workload),
        i.spec.node ? link(`/nodes/${i.spec.node}`, i.spec.node) : '—',
        [phaseBadge(phase), off ? [' ', h('span', { class: 'badge warn handed-off' }, 'handed off')] : null],
        String(i.status?.restarts ?? 0), String(i.spec.epoch ?? ''), since(i.metadata.creationTimestamp), i.status?.message || i.status?.reason || '',
      ],
    };
  });
  return table(['Name', 'Workload', 'Node', 'Phase', 'Restarts', 'Epoch', 'Age', 'Message'], rows, 'No instances.');
}

function instances(element) {
  heading(element, 'Instances');
  const body = h('div');
  element.append(body);
  return follow(['instances', 'events'], ({ instances: is, events: es }) => fill(body, instancesTable(is, es)));
}

// Appended pieces of the log kept on the page (each a read of the stream): the oldest go first.
const LOG_CHUNKS = 2000;

function instance(element, name) {
  heading(element, 'Instance ', h('span', { class: 'name' }, name));
  const top = h('div');
  const pause = h('button', { type: 'button', id: 'log-pause', 'aria-pressed': 'false' }, 'Pause');
  const state = h('span', { class: 'muted', id: 'log-state', role: 'status' }, 'connecting…');
  const log = h('pre', { class: 'log', id: 'log', tabindex: 0, 'aria-label': `Log of ${name}`, 'aria-live': 'off' });
  element.append(top, h('section', { class: 'card wide' }, h('h2', {}, 'Log ', state), h('div', { class: 'row' }, pause), log));
  const stop = new AbortController();
  let paused = false;
  let held = [];
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.setAttribute('aria-pressed', String(paused));
    if (!paused) { appendLines(held); held = []; }
  });
  function appendLines(lines) {
    if (!lines.length) return;
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    log.append(document.createTextNode(lines.join('\n') + '\n'));
    // Drop the oldest text beyond the cap, in whole nodes.
    while (log.childNodes.length > LOG_CHUNKS) log.firstChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }
  (async () => {
    let backoff = 1000;
    let since = null;
    while (!stop.signal.aborted) {
      try {
        const query = since ? `since=${encodeURIComponent(since)}&follow=true` : 'tail=200&follow=true';
        const response = await request('GET', `/instances/${encodeURIComponent(name)}/logs?${query}`, { signal: stop.signal });
        state.textContent = 'following';
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let partial = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const lines = (partial + value).split('\n');
          partial = lines.pop();
          since = new Date().toISOString();
          if (paused) held.push(...lines); else appendLines(lines);
        }
        state.textContent = 'the log ended (instance stopped?): reconnecting…';
      } catch (error) {
        if (stop.signal.aborted) return;
        state.textContent = `cannot follow the log: ${error.message}`;
      }
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  })();
  const unfollow = follow(['instances', 'events'], ({ instances: is, events: es }) => {
    const i = is.find((x) => x.metadata.name === name);
    if (!i) return fill(top, h('p', { class: 'error' }, `Instance ${name} does not exist (any more).`));
    fill(top, h('div', { class: 'grid' },
      section('Instance', facts([
        ['Workload', link(`/workloads/${i.spec.workload}`, i.spec.workload)], ['Node', i.spec.node ? link(`/nodes/${i.spec.node}`, i.spec.node) : '—'],
        ['Phase', phaseBadge(i.status?.phase || 'Pending')], ['Epoch', String(i.spec.epoch ?? '')], ['Restarts', String(i.status?.restarts ?? 0)],
        ['Started', clock(i.status?.startedAt)], ['Exit code', i.status?.exitCode == null ? '' : String(i.status.exitCode)], ['Message', i.status?.message || ''],
      ])),
      section('Events', eventsTable(newestFirst(es.filter((e) => e.involvedObject?.kind === 'Instance' && e.involvedObject?.name === name)).slice(0, 20)))));
  });
  return () => {
    stop.abort();
    unfollow();
  };
}

// ---- events -------------------------------------------------------------

function events(element) {
  heading(element, 'Events');
  const only = h('input', { type: 'checkbox', id: 'warnings-only' });
  element.append(h('p', {}, h('label', { for: 'warnings-only' }, only, ' Warnings only')));
  const body = h('div');
  element.append(body);
  let latest = [];
  const draw = () => fill(body, eventsTable(newestFirst(latest.filter((e) => !only.checked || e.type === 'Warning')).slice(0, 500)));
  only.addEventListener('change', draw);
  return follow(['events'], ({ events: es }) => {
    latest = es;
    draw();
  });
}
