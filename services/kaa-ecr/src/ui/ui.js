// The ECR page: app versions, their configurations with status counts, and
// staged rollouts, live. Plain JS, no build step; it only calls ECR's REST API
// (/api/v1) with the bearer token the user enters (kept in sessionStorage).
'use strict';

const API = new URL('../api/v1/', document.baseURI).href;
const POLL_MS = 1500;
const TOKEN_KEY = 'kaa-ecr-api-token';
// One active rollout per (app version, name): running, paused, or halted
// (aborted with onAbort "halt": the cohort keeps the new configuration).
const ACTIVE = new Set(['running', 'paused', 'halted']);
const ACTIONS = [
  // [action, label, states that allow it, needs confirmation]
  ['pause', 'Pause', ['running'], false],
  ['resume', 'Resume', ['paused'], false],
  ['promote', 'Promote', ['running', 'paused', 'halted'], true],
  ['abort', 'Abort', ['running', 'paused', 'halted'], true],
];

const $ = (id) => document.getElementById(id);
const state = {
  inFlight: false,
  needToken: false,
  sections: new Map(), // appVersionName -> section refs
  cards: new Map(),    // rolloutId -> card refs
  etags: new Map(),    // rolloutId -> ETag of the version shown
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, ifMatch) {
  const headers = { Accept: 'application/json' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = 'Bearer ' + token;
  if (ifMatch) headers['If-Match'] = ifMatch;
  let res;
  try {
    res = await fetch(API + path, { method, headers, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'ECR is not reachable (' + e.message + ')');
  }
  const text = await res.text();
  let body = null;
  if (text) {
    try { body = JSON.parse(text); } catch (e) { body = null; }
  }
  if (!res.ok) {
    const message = body && typeof body.message === 'string'
      ? body.message
      : res.status + ' ' + res.statusText;
    throw new ApiError(res.status, message);
  }
  return { body, etag: res.headers.get('ETag') };
}

// Element builder: h('td', {class: 'num'}, 'text', child, ...). Text is always
// set as text, never parsed as HTML.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const enc = encodeURIComponent;
const short = (id) => (id ? (id.length > 12 ? id.slice(0, 12) + '…' : id) : '—');
const pct = (n, of) => (of > 0 ? Math.min(100, (100 * n) / of) : 0);
const num = (v) => (typeof v === 'number' && isFinite(v) ? v : 0);

function showError(message) {
  const el = $('error');
  el.textContent = message || '';
  el.hidden = !message;
}

function showTokenForm(show) {
  state.needToken = show;
  $('token-form').hidden = !show;
  $('token-set').hidden = show || !sessionStorage.getItem(TOKEN_KEY);
  if (show) $('token').focus();
}

function handleError(e) {
  if (e.status === 401 || e.status === 403) {
    showTokenForm(true);
    showError('The API refused the token (' + e.status + '): ' + e.message + '. Enter a token above.');
  } else {
    showError(e.message);
  }
}

// ---------------------------------------------------------------- loading

async function load() {
  const { body: versions } = await api('GET', 'app-versions');
  return Promise.all((versions || []).map(async (av) => {
    const base = 'app-versions/' + enc(av.appVersionName);
    // Without ?name=: every name's rollouts.
    const listed = (await api('GET', base + '/rollouts')).body || [];
    // The names: the defaults', and those of rollouts of a name with no default yet.
    av.configurations = av.configurations || [];
    for (const r of listed) {
      if (!av.configurations.some((c) => c.name === r.name)) {
        av.configurations.push({ name: r.name, configId: null });
      }
    }
    const names = av.configurations.map((c) => c.name);
    const counts = await Promise.all(names.map((n) =>
      api('GET', base + '/status-counts?name=' + enc(n)).then((r) => r.body || [])));
    // One entry per rollout, newest first; active ones re-read for their ETag.
    const byId = new Map();
    for (const r of listed) if (!byId.has(r.rolloutId)) byId.set(r.rolloutId, r);
    const rollouts = await Promise.all([...byId.values()].map(async (r) => {
      if (!ACTIVE.has(r.state)) return r;
      try {
        const one = await api('GET', 'rollouts/' + enc(r.rolloutId));
        if (one.etag) state.etags.set(r.rolloutId, one.etag);
        return one.body || r;
      } catch (e) {
        return r;
      }
    }));
    rollouts.sort((a, b) => String(b.createdDate).localeCompare(String(a.createdDate)));
    return { av, counts: names.map((n, i) => ({ name: n, counts: counts[i] })), rollouts };
  }));
}

async function refresh() {
  if (state.inFlight || state.needToken) return;
  state.inFlight = true;
  try {
    const data = await load();
    render(data);
    showError('');
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    $('app-versions').setAttribute('aria-busy', 'false');
  } catch (e) {
    handleError(e);
  } finally {
    state.inFlight = false;
  }
}

// ---------------------------------------------------------------- rendering

function render(data) {
  const main = $('app-versions');
  if (data.length === 0) {
    main.replaceChildren(h('p', { class: 'muted' }, 'No app version has a configuration yet.'));
    state.sections.clear();
    return;
  }
  const seen = new Set();
  let previous = null;
  for (const item of data) {
    const key = item.av.appVersionName;
    seen.add(key);
    let s = state.sections.get(key);
    if (!s) {
      s = section(key);
      state.sections.set(key, s);
    }
    // Keep the order, moving nodes only when it changed (moves lose focus).
    const want = previous ? previous.nextSibling : main.firstChild;
    if (want !== s.el) main.insertBefore(s.el, want);
    previous = s.el;
    renderConfigs(s, item);
    renderRollouts(s, item.rollouts);
  }
  for (const node of [...main.children]) {
    if (!node.dataset || !seen.has(node.dataset.appVersion)) node.remove();
  }
  for (const key of [...state.sections.keys()]) if (!seen.has(key)) state.sections.delete(key);
}

let sectionCount = 0;
function section(name) {
  const id = 'av-' + (++sectionCount);
  const tbody = h('tbody');
  const rollouts = h('div', { class: 'rollouts' });
  const el = h('section', { 'aria-labelledby': id },
    h('h2', { id }, 'App version ', h('code', {}, name)),
    h('h3', {}, 'Configurations and what endpoints reported'),
    h('div', { class: 'legend', 'aria-hidden': 'true' },
      h('span', {}, h('span', { class: 'swatch applied' }), 'applied'),
      h('span', {}, h('span', { class: 'swatch rejected' }), 'rejected'),
      h('span', {}, h('span', { class: 'swatch dispatched' }), 'dispatched, no report yet')),
    h('table', {},
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'Config ID'),
        h('th', { scope: 'col' }, 'Role'),
        h('th', { scope: 'col', class: 'num' }, 'Applied'), h('th', { scope: 'col', class: 'num' }, 'Rejected'),
        h('th', { scope: 'col', class: 'num' }, 'Dispatched'),
        h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Endpoints')))),
      tbody),
    h('h3', {}, 'Rollouts'),
    rollouts);
  el.dataset.appVersion = name;
  return { el, tbody, rollouts };
}

function renderConfigs(s, item) {
  const rows = [];
  for (const c of item.av.configurations || []) {
    const counts = (item.counts.find((x) => x.name === c.name) || { counts: [] }).counts;
    const ids = new Set([c.configId, ...counts.map((x) => x.configId)].filter(Boolean));
    const active = item.rollouts.find((r) => r.name === c.name && !r.layer && ACTIVE.has(r.state));
    const total = counts.reduce((t, x) => t + num(x.applied) + num(x.rejected) + num(x.dispatched), 0);
    for (const id of ids) {
      const x = counts.find((k) => k.configId === id) || { applied: 0, rejected: 0, dispatched: 0 };
      // The stored default stays the previous configuration until the rollout completes.
      let role = id === c.configId ? 'default' : 'earlier';
      if (active && id === active.configId) role = 'rolling out';
      const a = num(x.applied), r = num(x.rejected), d = num(x.dispatched);
      const stack = h('div', { class: 'stack', role: 'img',
        'aria-label': a + ' applied, ' + r + ' rejected, ' + d + ' dispatched of ' + total + ' endpoints reporting on ' + c.name });
      for (const [cls, n] of [['applied', a], ['rejected', r], ['dispatched', d]]) {
        const seg = h('span', { class: cls });
        seg.style.width = pct(n, total) + '%';
        stack.append(seg);
      }
      rows.push(h('tr', {},
        h('td', {}, c.name), h('td', {}, h('code', { title: id || '' }, short(id))), h('td', {}, role),
        h('td', { class: 'num' }, a), h('td', { class: 'num' }, r), h('td', { class: 'num' }, d),
        h('td', {}, stack)));
    }
  }
  s.tbody.replaceChildren(...rows);
}

function renderRollouts(s, rollouts) {
  if (rollouts.length === 0) {
    if (!s.empty) s.empty = h('p', { class: 'muted' }, 'No rollout yet.');
    s.rollouts.replaceChildren(s.empty);
    return;
  }
  if (s.empty && s.empty.parentNode) s.empty.remove();
  let previous = null;
  const seen = new Set();
  for (const r of rollouts) {
    seen.add(r.rolloutId);
    let card = state.cards.get(r.rolloutId);
    if (!card) {
      card = rolloutCard(r);
      state.cards.set(r.rolloutId, card);
    }
    const want = previous ? previous.nextSibling : s.rollouts.firstChild;
    if (want !== card.el) s.rollouts.insertBefore(card.el, want);
    previous = card.el;
    updateCard(card, r);
  }
  for (const node of [...s.rollouts.children]) {
    if (!seen.has(node.dataset.rolloutId)) node.remove();
  }
}

let cardCount = 0;
function rolloutCard(r) {
  const id = 'rollout-' + (++cardCount);
  const refs = {};
  refs.title = h('h4', { id });
  refs.meta = h('p', { class: 'meta muted' });
  refs.reason = h('p', { class: 'meta' });
  refs.error = h('div', { class: 'error card-error', role: 'alert', hidden: true });
  refs.buttons = {};
  const actions = h('div', { class: 'actions', role: 'group', 'aria-label': 'Rollout actions' });
  for (const [action, label, , danger] of ACTIONS) {
    const b = h('button', { type: 'button', class: danger ? 'danger' : null, 'data-action': action }, label);
    b.addEventListener('click', () => act(r.rolloutId, action, label, danger));
    refs.buttons[action] = b;
    actions.append(b);
  }
  refs.config = h('pre', { class: 'config' });
  refs.details = h('details', {}, h('summary', {}, 'The new configuration'), refs.config);
  refs.steps = h('ol', { class: 'steps', 'aria-label': 'Steps' });
  refs.stepItems = [];
  refs.el = h('article', { class: 'rollout', 'aria-labelledby': id },
    h('div', { class: 'rollout-head' }, h('div', {}, refs.title, refs.meta, refs.reason), actions),
    refs.error, refs.steps, refs.details);
  refs.el.dataset.rolloutId = r.rolloutId;
  return refs;
}

function barRow(label, cls) {
  const fill = h('span', { class: 'fill ' + cls });
  const track = h('span', { class: 'track', 'aria-hidden': 'true' }, fill);
  const value = h('span', { class: 'num' });
  const row = h('div', { class: 'bar-row', 'data-count': cls }, h('span', {}, label), track, value);
  return { row, fill, track, value, mark: null };
}

function stepItem() {
  const head = h('div', { class: 'step-head' });
  const bars = {
    targeted: barRow('targeted', 'targeted'),
    delivered: barRow('delivered', 'delivered'),
    applied: barRow('applied', 'applied'),
    rejected: barRow('rejected', 'rejected'),
  };
  const el = h('li', { class: 'step' }, head, ...Object.values(bars).map((b) => b.row));
  return { el, head, bars };
}

function setMark(bar, percent, title) {
  if (percent === null || percent === undefined || !isFinite(percent)) {
    if (bar.mark) { bar.mark.remove(); bar.mark = null; }
    return;
  }
  if (!bar.mark) {
    bar.mark = h('span', { class: 'mark' });
    bar.track.append(bar.mark);
  }
  bar.mark.style.left = 'calc(' + Math.min(100, Math.max(0, percent)) + '% - 1px)';
  bar.mark.title = title;
}

function updateCard(card, r) {
  const stateCls = 'state state-' + (r.state || 'unknown');
  card.el.dataset.state = r.state || '';
  const what = r.layer ? ['layer ', h('code', {}, r.layer.layerName), ' of '] : [];
  card.title.replaceChildren('Rollout of ', ...what, h('code', {}, r.name || 'default'), ' to ',
    h('code', { title: r.configId || '' }, short(r.configId)),
    h('span', { class: stateCls }, r.state || 'unknown'));
  const steps = r.steps || [];
  const gate = r.gate || {};
  const abort = r.abort || {};
  const current = steps[r.step];
  const parts = [
    'from ' + (r.previousConfigId ? short(r.previousConfigId) : (r.layer ? 'no layer' : 'no configuration')),
    'step ' + (num(r.step) + 1) + ' of ' + steps.length + (current ? ' (' + current.percent + '% of endpoints)' : ''),
    'gate: ' + num(gate.minAppliedPercent) + '% applied (at least ' + num(gate.minApplied) + ') after ' + num(gate.soakSeconds) + ' s',
    'abort: over ' + num(abort.maxRejectedPercent) + '% rejected of at least ' + num(abort.minSample) + ', on abort ' + (r.onAbort || '?'),
  ];
  card.meta.textContent = parts.join(' · ');
  card.reason.textContent = r.reason ? 'Reason: ' + r.reason : '';
  card.reason.hidden = !r.reason;
  card.details.hidden = typeof r.config !== 'string';
  if (typeof r.config === 'string' && card.config.dataset.raw !== r.config) {
    card.config.dataset.raw = r.config;
    let pretty = r.config;
    try { pretty = JSON.stringify(JSON.parse(r.config), null, 2); } catch (e) { /* shown as sent */ }
    card.config.textContent = pretty;
  }
  for (const [action, , allowed] of ACTIONS) {
    const b = card.buttons[action];
    b.disabled = card.busy || !allowed.includes(r.state);
  }
  while (card.stepItems.length < steps.length) {
    const item = stepItem();
    card.stepItems.push(item);
    card.steps.append(item.el);
  }
  while (card.stepItems.length > steps.length) card.stepItems.pop().el.remove();
  steps.forEach((st, i) => updateStep(card.stepItems[i], st, i, i === num(r.step) && steps.length > 0, r));
}

function updateStep(item, st, i, isCurrent, r) {
  item.el.className = 'step' + (isCurrent ? ' current' : '');
  if (isCurrent) item.el.setAttribute('aria-current', 'step');
  else item.el.removeAttribute('aria-current');
  const targeted = num(st.targeted);
  const head = [h('strong', {}, 'Step ' + (i + 1) + ' · ' + st.percent + '%')];
  const bits = [st.state || ''];
  if (st.state === 'soaking' && st.soakUntil) {
    const left = Math.round((Date.parse(st.soakUntil) - Date.now()) / 1000);
    if (isFinite(left)) bits.push(left > 0 ? 'soak ' + left + ' s left' : 'soak over');
  }
  if (num(st.timedOut) > 0) bits.push(num(st.timedOut) + ' timed out');
  head.push(h('span', {}, bits.join(' · ')));
  if (isCurrent) head.push(h('span', { class: 'here' }, 'current step'));
  item.head.replaceChildren(...head);
  for (const key of ['targeted', 'delivered', 'applied', 'rejected']) {
    const n = num(st[key]);
    const bar = item.bars[key];
    bar.fill.style.width = (key === 'targeted' ? (targeted > 0 ? 100 : 0) : pct(n, targeted)) + '%';
    bar.value.textContent = key === 'targeted' ? String(n) : n + ' (' + Math.round(pct(n, targeted)) + '%)';
    bar.row.title = key + ': ' + n + ' of ' + targeted + ' targeted endpoints';
  }
  const gate = r.gate || {};
  const abort = r.abort || {};
  setMark(item.bars.applied, typeof gate.minAppliedPercent === 'number' ? gate.minAppliedPercent : null,
    'gate: ' + gate.minAppliedPercent + '% applied');
  setMark(item.bars.rejected, typeof abort.maxRejectedPercent === 'number' ? abort.maxRejectedPercent : null,
    'abort: over ' + abort.maxRejectedPercent + '% rejected');
}

// ---------------------------------------------------------------- actions

async function act(rolloutId, action, label, confirmFirst) {
  const card = state.cards.get(rolloutId);
  if (confirmFirst && !window.confirm(label + ' rollout ' + rolloutId + '?')) return;
  card.error.hidden = true;
  card.busy = true;
  for (const b of Object.values(card.buttons)) b.disabled = true;
  try {
    const res = await api('POST', 'rollouts/' + enc(rolloutId) + '/' + action, state.etags.get(rolloutId));
    if (res.etag) state.etags.set(rolloutId, res.etag);
    card.busy = false;
    if (res.body) updateCard(card, res.body);
    // Focus stays in the card: on the button that undoes this one, if any.
    const next = Object.values(card.buttons).find((b) => !b.disabled);
    if (next) next.focus();
  } catch (e) {
    card.busy = false;
    if (e.status === 401 || e.status === 403) {
      handleError(e);
    } else {
      card.error.textContent = label + ' failed (' + e.status + '): ' + e.message
        + (e.status === 412 ? ' The rollout changed meanwhile: check it and try again.' : '');
      card.error.hidden = false;
    }
    // The next refresh re-reads it (and its ETag).
    state.etags.delete(rolloutId);
  } finally {
    card.busy = false;
    refresh();
  }
}

// ---------------------------------------------------------------- start

document.addEventListener('DOMContentLoaded', () => {
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('token').value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
    showTokenForm(false);
    showError('');
    refresh();
  });
  $('forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenForm(true);
  });
  showTokenForm(false);
  refresh();
  setInterval(() => { if ($('live').checked && !document.hidden) refresh(); }, POLL_MS);
});
