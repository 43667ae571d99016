// Coalition Sync coordinator dashboard.
//
// Plain script, no dependencies: the relay serves it from its binary and may have no internet.
// Every piece of data reaches the page as a text node or an attribute value set through the
// DOM (never as markup), and charts are inline SVG drawn here.
'use strict';

(function () {
  const KEY = 'coalition.credential';
  const SVGNS = 'http://www.w3.org/2000/svg';
  const TABS = [
    ['overview', 'Overview'],
    ['map', 'Hazard map'],
    ['conflicts', 'Conflicts'],
    ['history', 'History'],
    ['health', 'Sync health'],
    ['article7', 'Article 7'],
  ];
  const COLORS = {
    cancelled: '#8fb8de', reduced: '#3f7cbf', cleared: '#1d4e89',
    needs: '#9aa5b1', committed: '#3f7cbf', disbursed: '#1d4e89', gap: '#c0392b', announced: '#c9d6e8',
    active: '#c0392b', in_progress: '#e08e0b', released: '#2e8b57',
  };

  const state = {
    token: null, me: null, coalitions: [], id: null, tab: 'overview',
    asOf: '', events: null, live: 'off', renders: 0, historyAll: null, historyShown: 200,
    reloadTimer: null, atDate: '', a7Date: '',
  };

  // ---------- DOM helpers ----------
  function h(tag, attrs, ...kids) { return build(document.createElement(tag), attrs, kids); }
  function s(tag, attrs, ...kids) { return build(document.createElementNS(SVGNS, tag), attrs, kids); }
  function build(el, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'text') el.textContent = String(v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    append(el, kids);
    return el;
  }
  function append(el, kids) {
    for (const k of kids) {
      if (k === null || k === undefined || k === false) continue;
      if (Array.isArray(k)) append(el, k);
      else if (k instanceof Node) el.appendChild(k);
      else el.appendChild(document.createTextNode(String(k)));
    }
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  const $ = (sel) => document.querySelector(sel);

  // ---------- formatting ----------
  const intFmt = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  const fmt = (n) => (n === null || n === undefined ? '–' : intFmt.format(Math.round(n)));
  const usd = (n) => (n === null || n === undefined ? '–' : 'USD ' + fmt(n));
  const label = (k) => String(k).replace(/_/g, ' ');
  const dateOf = (t) => (t ? new Date(t * 1000).toISOString().slice(0, 10) : '–');
  const timeOf = (t) => (t ? new Date(t * 1000).toISOString().slice(0, 16).replace('T', ' ') + ' UTC' : '–');
  function ago(t) {
    if (!t) return 'never';
    const d = Date.now() / 1000 - t;
    if (d < 90) return 'just now';
    if (d < 5400) return Math.round(d / 60) + ' min ago';
    if (d < 129600) return Math.round(d / 3600) + ' h ago';
    return Math.round(d / 86400) + ' days ago';
  }
  const today = () => new Date().toISOString().slice(0, 10);
  function valueText(v) {
    if (typeof v === 'string') return v;
    return JSON.stringify(v);
  }

  // ---------- API ----------
  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }
  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    opts.headers = Object.assign({ Authorization: 'Bearer ' + state.token }, opts.headers);
    const res = await fetch(path, opts);
    if (!res.ok) {
      let code = 'http_' + res.status, message = res.statusText || 'request failed';
      try { const j = await res.json(); code = j.error.code; message = j.error.message; } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, code, message);
    }
    const type = res.headers.get('content-type') || '';
    return type.includes('json') ? res.json() : res.text();
  }
  const cpath = (view) => '/api/v1/coalitions/' + encodeURIComponent(state.id) + '/' + view;

  function toast(text, bad) {
    const t = $('#toast');
    t.textContent = text;
    t.className = 'toast show' + (bad ? ' bad' : '');
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.className = 'toast'; }, 4000);
  }

  // ---------- sign-in ----------
  function stored() { return sessionStorage.getItem(KEY) || localStorage.getItem(KEY); }
  function remember(token, persist) {
    sessionStorage.setItem(KEY, token);
    if (persist) localStorage.setItem(KEY, token); else localStorage.removeItem(KEY);
  }
  function signOut() {
    sessionStorage.removeItem(KEY);
    localStorage.removeItem(KEY);
    stopEvents();
    state.token = null; state.me = null; state.id = null;
    location.hash = '';
    showSignIn();
  }

  function showSignIn(message) {
    clear($('#coalitions')); clear($('#who'));
    const main = clear($('#main'));
    const err = h('p', { class: 'error', role: 'alert', id: 'signin-error', text: message || '' });
    const credForm = h('form', { class: 'card narrow', 'aria-labelledby': 'signin-h', onsubmit: async (e) => {
      e.preventDefault();
      const token = credForm.elements.credential.value.trim();
      if (!token) return;
      try { await signIn(token, credForm.elements.persist.checked); } catch (x) { err.textContent = x.message; }
    } },
    h('h1', { id: 'signin-h', text: 'Sign in' }),
    h('p', { text: 'Use the credential of an enrolled device (it starts with “cred-”).' }),
    h('label', { for: 'credential', text: 'Device credential' }),
    h('input', { id: 'credential', name: 'credential', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' }),
    h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'persist', id: 'persist' }), ' Remember on this device'),
    h('button', { type: 'submit', class: 'primary', text: 'Sign in' }));

    const enrollOut = h('div', { 'aria-live': 'polite' });
    const enrollForm = h('form', { class: 'card narrow', 'aria-labelledby': 'enroll-h', onsubmit: async (e) => {
      e.preventDefault();
      const invite = enrollForm.elements.invite.value.trim();
      const device = enrollForm.elements.device.value.trim() || 'dashboard';
      const actor = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
      try {
        const res = await fetch('/api/v1/enroll', { method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ invite, device, actor }) });
        const j = await res.json();
        if (!res.ok) throw new Error(j.error ? j.error.message : 'enrollment failed');
        clear(enrollOut).append(h('p', { text: 'Enrolled as ' + j.user + ' (' + j.org + ', ' + j.role + '). Keep this credential to sign in again; it is shown once:' }),
          h('code', { class: 'secret', id: 'new-credential', text: j.credential }));
        await signIn(j.credential, enrollForm.elements.persist2.checked, true);
      } catch (x) { err.textContent = x.message; }
    } },
    h('h2', { id: 'enroll-h', text: 'Enroll with an invite' }),
    h('p', { text: 'A coordinator gives you a single-use invite (it starts with “inv-”).' }),
    h('label', { for: 'invite', text: 'Invite code' }),
    h('input', { id: 'invite', name: 'invite', autocomplete: 'off', required: true, spellcheck: 'false' }),
    h('label', { for: 'device', text: 'Name of this device' }),
    h('input', { id: 'device', name: 'device', value: 'dashboard browser', autocomplete: 'off' }),
    h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'persist2' }), ' Remember on this device'),
    h('button', { type: 'submit', text: 'Enroll and sign in' }),
    enrollOut);
    main.append(h('div', { class: 'signin' }, err, credForm, enrollForm));
  }

  async function signIn(token, persist, keepPage) {
    state.token = token;
    let me;
    try { me = await api('/api/v1/me'); } catch (x) {
      state.token = null;
      throw new Error(x.code === 'unauthorized' ? 'This credential is not known to the relay.' : x.message);
    }
    remember(token, persist);
    state.me = me;
    state.coalitions = await api('/api/v1/coalitions');
    renderWho();
    renderCoalitionNav();
    if (!keepPage) route();
    else {
      const go = h('button', { class: 'primary', text: 'Continue to the dashboard', onclick: () => route() });
      $('#main .signin').append(go);
      go.focus();
    }
  }

  function renderWho() {
    const me = state.me;
    clear($('#who')).append(
      h('span', { text: me.user + ' · ' + me.org + ' · ' + me.role }),
      h('span', { id: 'live', class: 'live ' + state.live, text: liveText() }),
      h('button', { class: 'link', text: 'Sign out', onclick: signOut }));
  }
  function liveText() { return { on: '● Live', off: '', wait: '○ Reconnecting…' }[state.live] || ''; }
  function setLive(v) {
    state.live = v;
    const el = $('#live');
    if (el) { el.className = 'live ' + v; el.textContent = liveText(); }
  }

  function renderCoalitionNav() {
    const nav = clear($('#coalitions'));
    nav.append(h('ul', {}, state.coalitions.map((c) => h('li', {},
      h('a', { href: '#/c/' + encodeURIComponent(c.id) + '/overview', 'aria-current': c.id === state.id ? 'page' : null,
        text: c.affected_state + ' · ' + c.name })))));
  }

  // ---------- routing ----------
  function route() {
    if (!state.token) return showSignIn();
    const m = /^#\/c\/([^/]+)\/([a-z0-9]+)/.exec(location.hash);
    if (!m) {
      if (state.coalitions.length === 1) { location.hash = '#/c/' + encodeURIComponent(state.coalitions[0].id) + '/overview'; return; }
      return renderList();
    }
    const id = decodeURIComponent(m[1]);
    const tab = TABS.some((t) => t[0] === m[2]) ? m[2] : 'overview';
    if (id !== state.id) { state.id = id; state.historyAll = null; startEvents(); }
    state.tab = tab;
    renderCoalitionNav();
    renderCoalition(true);
  }

  function renderList() {
    state.id = null; stopEvents();
    const main = clear($('#main'));
    main.append(h('h1', { text: 'Coalitions' }));
    if (!state.coalitions.length) main.append(h('p', { text: 'This device is not enrolled in any coalition the relay holds.' }));
    main.append(h('ul', { class: 'cards' }, state.coalitions.map((c) => h('li', { class: 'card' },
      h('h2', {}, h('a', { href: '#/c/' + encodeURIComponent(c.id) + '/overview', text: c.name })),
      h('p', { text: 'Affected state ' + c.affected_state + ' · ' + c.documents + ' documents' })))));
    main.focus();
  }

  // ---------- live updates ----------
  function startEvents() {
    stopEvents();
    if (!window.EventSource || !state.id) return;
    const es = new EventSource(cpath('events') + '?token=' + encodeURIComponent(state.token));
    state.events = es;
    es.addEventListener('ready', () => setLive('on'));
    es.addEventListener('changed', () => {
      setLive('on');
      clearTimeout(state.reloadTimer);
      state.reloadTimer = setTimeout(() => { state.historyAll = null; renderCoalition(false); }, 100);
    });
    es.onerror = () => setLive('wait');
  }
  function stopEvents() {
    if (state.events) state.events.close();
    state.events = null;
    setLive('off');
  }

  // ---------- coalition page ----------
  async function renderCoalition(moveFocus) {
    const c = state.coalitions.find((x) => x.id === state.id);
    const main = $('#main');
    const focusKey = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
    const scroll = window.scrollY;
    const page = h('div', { class: 'page' });
    page.append(h('div', { class: 'title' },
      h('h1', { text: c ? c.name : 'Coalition ' + state.id }),
      h('span', { class: 'sub', text: c ? 'Affected state ' + c.affected_state : '' })));
    page.append(h('nav', { class: 'tabs', 'aria-label': 'Views' }, h('ul', {}, TABS.map(([k, t]) => h('li', {},
      h('a', { href: '#/c/' + encodeURIComponent(state.id) + '/' + k, 'aria-current': k === state.tab ? 'page' : null, text: t }))))));
    const body = h('section', { class: 'view', id: 'view', 'aria-labelledby': 'view-h' });
    page.append(body);
    try {
      await VIEWS[state.tab](body);
    } catch (x) {
      if (x.code === 'unauthorized' || x.code === 'device_revoked') return signOut();
      body.append(h('p', { class: 'error', role: 'alert', text: 'Could not load this view: ' + x.message }));
    }
    clear(main).append(page);
    state.renders += 1;
    document.body.dataset.renders = String(state.renders);
    document.title = (TABS.find((t) => t[0] === state.tab) || ['', ''])[1] + ' — ' + (c ? c.name : 'Coalition Sync');
    if (moveFocus) { main.focus({ preventScroll: true }); window.scrollTo(0, 0); }
    else {
      window.scrollTo(0, scroll);
      if (focusKey) { const el = main.querySelector('[data-key="' + CSS.escape(focusKey) + '"]'); if (el) el.focus({ preventScroll: true }); }
    }
  }

  const VIEWS = { overview, map, conflicts: conflictsView, history: historyView, health, article7 };

  // A figure whose value the tests compare with the API: `path` into the report.
  function figure(report, path, title, opts) {
    const v = get(report, path);
    const o = opts || {};
    return h('div', { class: 'fig' + (o.cls ? ' ' + o.cls : '') },
      h('dt', { text: title }),
      h('dd', { 'data-path': path, 'data-value': v, text: (o.format || fmt)(v) + (o.unit ? ' ' + o.unit : '') }));
  }
  function get(obj, path) { return path.split('.').reduce((o, k) => (o === null || o === undefined ? o : o[k]), obj); }

  async function overview(body) {
    const asOf = state.asOf || today();
    const r = await api(cpath('report') + '?as_of=' + encodeURIComponent(asOf));
    const dateForm = h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); state.asOf = dateForm.elements.asof.value; renderCoalition(false); } },
      h('label', { for: 'asof', text: 'Report as of' }),
      h('input', { type: 'date', id: 'asof', name: 'asof', value: asOf, 'data-key': 'asof' }),
      h('button', { type: 'submit', text: 'Show', 'data-key': 'asof-go' }));
    body.append(h('div', { class: 'viewhead' }, h('h2', { id: 'view-h', text: 'Overview' }), dateForm));
    const risk = r.deadline_risk;
    body.append(h('dl', { class: 'figs', id: 'key-figures' },
      figure(r, 'clearance.remaining_sha_m2', 'Remaining SHA', { unit: 'm²' }),
      figure(r, 'clearance.remaining_cha_m2', 'Remaining CHA', { unit: 'm²' }),
      figure(r, 'clearance.released_m2', 'Released (approved)', { unit: 'm²' }),
      figure(r, 'clearance.open_areas', 'Open hazard areas'),
      figure(r, 'clearance.pending_entries', 'Entries awaiting approval'),
      figure(r, 'stockpile.remaining', 'Stockpile still to destroy'),
      figure(r, 'deadline_risk.level', 'Article 4 deadline', { format: label, cls: 'risk-' + risk.level })));

    // Progress per pillar.
    const by = r.clearance.by_year;
    const grid = h('div', { class: 'grid' });
    grid.append(panel('Land released per year (m²)', stackedBars(by, 'year', [
      ['cancelled_m2', 'Cancelled (NTS)', COLORS.cancelled], ['reduced_m2', 'Reduced (TS)', COLORS.reduced], ['cleared_m2', 'Cleared', COLORS.cleared],
    ], 'clearance.by_year'), table(['Year', 'Cancelled m²', 'Reduced m²', 'Cleared m²', 'Items destroyed'],
      by.map((y, i) => [String(y.year), cell(r, 'clearance.by_year.' + i + '.cancelled_m2'), cell(r, 'clearance.by_year.' + i + '.reduced_m2'),
        cell(r, 'clearance.by_year.' + i + '.cleared_m2'), cell(r, 'clearance.by_year.' + i + '.items')]), 'Data table')));
    grid.append(panel('Items destroyed per year', bars(by.map((y) => [String(y.year), y.items]), COLORS.cleared),
      h('p', { class: 'note' }, 'By type: ', Object.entries(r.clearance.items_by_type).map(([k, v]) => label(k) + ' ' + fmt(v)).join(', ') || 'none')));
    grid.append(panel('Remaining contamination', hbars([
      ['Released', r.clearance.released_m2, COLORS.released], ['Remaining CHA', r.clearance.remaining_cha_m2, COLORS.active], ['Remaining SHA', r.clearance.remaining_sha_m2, COLORS.in_progress],
    ], 'm²'), h('p', { class: 'note', text: fmt(r.clearance.pending_m2) + ' m² in ' + fmt(r.clearance.pending_entries) + ' entries await approval and are not counted.' })));
    const st = r.stockpile;
    grid.append(panel('Stockpile (Article 3)', hbars([
      ['Declared', st.declared, COLORS.needs], ['Destroyed', st.destroyed, COLORS.cleared], ['Retained', st.retained, COLORS.reduced],
      ['Transferred', st.transferred, COLORS.cancelled], ['Remaining', st.remaining, COLORS.active],
    ], 'munitions'), h('p', { class: 'note', text: 'Submunitions: ' + fmt(st.destroyed_submunitions) + ' of ' + fmt(st.declared_submunitions) + ' destroyed.' })));
    body.append(grid);

    // Deadline risk and funding per pillar, side by side on a wide screen.
    const grid2 = h('div', { class: 'grid' });
    grid2.append(panel('Deadline risk (Article 4)', deadlineChart(r), h('dl', { class: 'figs small' },
      figure(r, 'deadline_risk.remaining_m2', 'Remaining', { unit: 'm²' }),
      figure(r, 'deadline_risk.released_last_12_months_m2', 'Released in the last 12 months', { unit: 'm²' }),
      figure(r, 'deadline_risk.months_to_complete', 'Months to complete at that rate', { format: (v) => (v === null ? 'never at this rate' : fmt(v)) }),
      figure(r, 'deadline_risk.current_deadline', 'Deadline in force', { format: (v) => v || 'not set' }),
      figure(r, 'deadline_risk.projected_completion', 'Projected completion', { format: (v) => v || '–' }))));

    // Funding.
    const pillars = r.funding_by_pillar;
    grid2.append(panel('Funding per pillar (USD, all years)', groupedBars(pillars.map((p) => label(p.pillar)), [
      ['needs_usd', 'Needs', COLORS.needs], ['committed_usd', 'Committed', COLORS.committed], ['disbursed_usd', 'Disbursed', COLORS.disbursed], ['gap_usd', 'Gap', COLORS.gap],
    ], pillars), table(['Pillar', 'Needs', 'Committed', 'Disbursed', 'Gap'], pillars.map((p, i) => [label(p.pillar),
      cell(r, 'funding_by_pillar.' + i + '.needs_usd'), cell(r, 'funding_by_pillar.' + i + '.committed_usd'),
      cell(r, 'funding_by_pillar.' + i + '.disbursed_usd'), cell(r, 'funding_by_pillar.' + i + '.gap_usd', p.gap_usd > 0 ? 'short' : 'ok')]), 'Data table')));
    body.append(grid2);
    body.append(panel('Funding gap per pillar and year (USD)', h('div', { class: 'scroll' }, table(
      ['Pillar', 'Year', 'Needs', 'Announced', 'Committed', 'Disbursed', 'In kind', 'Gap', 'Original currencies'],
      r.funding.map((f, i) => [label(f.pillar), String(f.year), cell(r, 'funding.' + i + '.needs_usd'), cell(r, 'funding.' + i + '.announced_usd'),
        cell(r, 'funding.' + i + '.committed_usd'), cell(r, 'funding.' + i + '.disbursed_usd'), cell(r, 'funding.' + i + '.in_kind_usd'),
        cell(r, 'funding.' + i + '.gap_usd', f.gap_usd > 0 ? 'short' : 'ok'), originals(f.original)])))));

    // Donor matrix.
    body.append(panel('Who pledged what: donor × pillar × year (USD pledged)', donorMatrix(r)));
    if (r.flags.length) {
      body.append(h('details', { class: 'panel' }, h('summary', { text: 'Soft rules that do not hold (' + r.flags.length + ')' }),
        h('ul', {}, r.flags.map((f) => h('li', {}, h('strong', { text: label(f.rule) }), ': ' + f.message)))));
    }
  }

  function cell(r, path, cls) {
    const v = get(r, path);
    return h('span', { 'data-path': path, 'data-value': v, class: cls || null, text: fmt(v) });
  }
  function originals(orig) {
    const parts = Object.entries(orig || {}).map(([cur, a]) => cur + ': ' +
      ['needs', 'announced', 'committed', 'disbursed'].filter((k) => a[k]).map((k) => k + ' ' + fmt(a[k])).join(', '));
    return h('span', { class: 'orig', title: parts.join('\n'), text: parts.join('; ') || '–' });
  }

  function panel(title, ...kids) {
    return h('section', { class: 'panel' }, h('h3', { text: title }), kids);
  }
  function table(headers, rows, caption) {
    const t = h('table', {},
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col', text: x })))),
      h('tbody', {}, rows.map((row) => h('tr', {}, row.map((v, i) => {
        const numeric = typeof v === 'number' || (v instanceof Element && (v.hasAttribute('data-value') || v.tagName === 'STRONG'));
        return h(i === 0 ? 'th' : 'td', i === 0 ? { scope: 'row' } : { class: numeric ? 'n' : null }, typeof v === 'number' ? fmt(v) : v);
      })))));
    if (caption) return h('details', {}, h('summary', { text: caption }), t);
    return t;
  }

  // ---------- charts (SVG) ----------
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function short(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1).replace(/\.0$/, '') + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, '') + 'M';
    if (a >= 1e3) return (v / 1e3).toFixed(0) + 'k';
    return String(Math.round(v));
  }
  function axis(svg, x0, x1, y0, y1, max, min) {
    const lo = min || 0;
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((max - lo) * i) / 4;
      const y = y1 - ((v - lo) / (max - lo)) * (y1 - y0);
      svg.append(s('line', { x1: x0, x2: x1, y1: y, y2: y, class: 'gridline' }),
        s('text', { x: x0 - 6, y: y + 4, 'text-anchor': 'end', class: 'tick', text: short(v) }));
    }
  }
  function legend(items) {
    return h('ul', { class: 'legend' }, items.map(([, t, c]) => h('li', {}, swatch(c), t)));
  }
  function swatch(c) {
    return s('svg', { width: 12, height: 12, 'aria-hidden': 'true', class: 'sw' }, s('rect', { width: 12, height: 12, fill: c }));
  }
  function chart(w, hgt, aria) {
    return s('svg', { viewBox: '0 0 ' + w + ' ' + hgt, class: 'chart', role: 'img', 'aria-label': aria, preserveAspectRatio: 'xMidYMid meet' });
  }
  function stackedBars(rows, key, series, path) {
    const W = 560, H = 240, L = 56, R = 10, T = 12, B = 28;
    const totals = rows.map((r) => series.reduce((a, [k]) => a + (r[k] || 0), 0));
    const max = niceMax(Math.max(0, ...totals));
    const svg = chart(W, H, 'Stacked bars: ' + series.map((x) => x[1]).join(', ') + ' per ' + key);
    axis(svg, L, W - R, T, H - B, max);
    const bw = (W - L - R) / Math.max(rows.length, 1);
    rows.forEach((r, i) => {
      let y = H - B;
      const x = L + i * bw + bw * 0.18;
      series.forEach(([k, t, c]) => {
        const v = r[k] || 0;
        const hh = (v / max) * (H - B - T);
        y -= hh;
        svg.append(s('rect', { x, y, width: bw * 0.64, height: Math.max(hh, 0), fill: c, 'data-path': path + '.' + i + '.' + k, 'data-value': v },
          s('title', { text: r[key] + ' · ' + t + ': ' + fmt(v) })));
      });
      svg.append(s('text', { x: x + bw * 0.32, y: H - B + 16, 'text-anchor': 'middle', class: 'tick', text: r[key] }),
        s('text', { x: x + bw * 0.32, y: y - 4, 'text-anchor': 'middle', class: 'val', text: short(totals[i]) }));
    });
    return h('figure', {}, svg, legend(series));
  }
  function bars(pairs, color) {
    const W = 560, H = 200, L = 48, R = 10, T = 12, B = 28;
    const max = niceMax(Math.max(0, ...pairs.map((p) => p[1])));
    const svg = chart(W, H, 'Bars: ' + pairs.map((p) => p[0] + ' ' + fmt(p[1])).join(', '));
    axis(svg, L, W - R, T, H - B, max);
    const bw = (W - L - R) / Math.max(pairs.length, 1);
    pairs.forEach(([k, v], i) => {
      const hh = (v / max) * (H - B - T);
      const x = L + i * bw + bw * 0.2;
      svg.append(s('rect', { x, y: H - B - hh, width: bw * 0.6, height: hh, fill: color }, s('title', { text: k + ': ' + fmt(v) })),
        s('text', { x: x + bw * 0.3, y: H - B + 16, 'text-anchor': 'middle', class: 'tick', text: k }),
        s('text', { x: x + bw * 0.3, y: H - B - hh - 4, 'text-anchor': 'middle', class: 'val', text: fmt(v) }));
    });
    return h('figure', {}, svg);
  }
  function hbars(items, unit) {
    const W = 560, rowH = 30, L = 120, R = 90;
    const H = items.length * rowH + 8;
    const max = niceMax(Math.max(0, ...items.map((x) => x[1])));
    const svg = chart(W, H, items.map((x) => x[0] + ' ' + fmt(x[1]) + ' ' + unit).join(', '));
    items.forEach(([t, v, c], i) => {
      const y = 4 + i * rowH;
      const w = ((v || 0) / max) * (W - L - R);
      svg.append(s('text', { x: L - 8, y: y + 18, 'text-anchor': 'end', class: 'tick', text: t }),
        s('rect', { x: L, y: y + 4, width: Math.max(w, 0), height: rowH - 10, fill: c }, s('title', { text: t + ': ' + fmt(v) + ' ' + unit })),
        s('text', { x: L + w + 6, y: y + 18, class: 'val', text: fmt(v) }));
    });
    return h('figure', {}, svg);
  }
  function groupedBars(groups, series, rows) {
    const W = 560, H = 240, L = 56, R = 10, T = 12, B = 28;
    const vals = rows.flatMap((r) => series.map(([k]) => r[k] || 0));
    const max = niceMax(Math.max(0, ...vals));
    const min = Math.min(0, ...vals) < 0 ? -niceMax(-Math.min(...vals)) : 0;
    const svg = chart(W, H, 'Funding per pillar: ' + series.map((x) => x[1]).join(', '));
    axis(svg, L, W - R, T, H - B, max, min);
    const zero = H - B - ((0 - min) / (max - min)) * (H - B - T);
    const gw = (W - L - R) / Math.max(groups.length, 1);
    const bw = (gw * 0.8) / series.length;
    rows.forEach((r, i) => {
      series.forEach(([k, t, c], j) => {
        const v = r[k] || 0;
        const y = H - B - ((v - min) / (max - min)) * (H - B - T);
        svg.append(s('rect', { x: L + i * gw + gw * 0.1 + j * bw, y: Math.min(y, zero), width: bw * 0.9, height: Math.abs(zero - y), fill: c },
          s('title', { text: groups[i] + ' · ' + t + ': USD ' + fmt(v) })));
      });
      svg.append(s('text', { x: L + i * gw + gw / 2, y: H - B + 16, 'text-anchor': 'middle', class: 'tick', text: groups[i] }));
    });
    svg.append(s('line', { x1: L, x2: W - R, y1: zero, y2: zero, class: 'zero' }));
    return h('figure', {}, svg, legend(series));
  }
  function deadlineChart(r) {
    const d = r.deadline_risk;
    const W = 560, H = 70, L = 20, R = 20;
    const pts = [['Report date', r.as_of], ['Deadline', d.current_deadline], ['Projected completion', d.projected_completion]].filter((p) => p[1]);
    const svg = chart(W, H, 'Timeline: ' + pts.map((p) => p[0] + ' ' + p[1]).join(', ') + '; ' + label(d.level));
    const t = pts.map((p) => Date.parse(p[1]));
    const lo = Math.min(...t), hi = Math.max(...t);
    const span = hi - lo || 1;
    const x = (v) => L + ((v - lo) / span) * (W - L - R);
    svg.append(s('line', { x1: L, x2: W - R, y1: 30, y2: 30, class: 'axisline' }));
    pts.forEach((p, i) => {
      const xx = x(t[i]);
      const cls = p[0] === 'Deadline' ? 'mark deadline' : p[0] === 'Projected completion' ? 'mark projected' : 'mark';
      svg.append(s('circle', { cx: xx, cy: 30, r: 6, class: cls }, s('title', { text: p[0] + ': ' + p[1] })),
        s('text', { x: xx, y: i % 2 ? 58 : 16, 'text-anchor': xx < 80 ? 'start' : xx > W - 80 ? 'end' : 'middle', class: 'tick', text: p[0] + ' ' + p[1] }));
    });
    const badge = h('p', { class: 'badge risk-' + d.level, text: label(d.level) });
    return h('div', {}, badge, h('figure', {}, svg));
  }
  function donorMatrix(r) {
    const years = [...new Set(r.donor_matrix.map((c) => c.year))].sort();
    const keys = [...new Set(r.donor_matrix.map((c) => c.donor + '\u0000' + c.pillar))].sort();
    const byKey = new Map(r.donor_matrix.map((c, i) => [c.donor + '\u0000' + c.pillar + '\u0000' + c.year, [c, i]]));
    const rows = keys.map((k) => {
      const [donor, pillar] = k.split('\u0000');
      let total = 0;
      const cells = years.map((y) => {
        const hit = byKey.get(k + '\u0000' + y);
        if (!hit) return '';
        const [c, i] = hit;
        total += c.pledged_usd;
        const orig = Object.entries(c.original).map(([cur, a]) => cur + ' ' + fmt(a)).join(', ');
        return h('span', { 'data-path': 'donor_matrix.' + i + '.pledged_usd', 'data-value': c.pledged_usd,
          title: 'Pledged ' + orig + ' · disbursed USD ' + fmt(c.disbursed_usd), text: fmt(c.pledged_usd) });
      });
      return [donor, label(pillar), ...cells, h('strong', { text: fmt(total) })];
    });
    return h('div', { class: 'scroll' }, table(['Donor', 'Pillar', ...years.map(String), 'Total'], rows),
      h('p', { class: 'note', text: 'Hover or focus a cell for the original currency and what was disbursed.' }));
  }

  // ---------- map ----------
  async function map(body) {
    const data = await api(cpath('areas'));
    body.append(h('div', { class: 'viewhead' }, h('h2', { id: 'view-h', text: 'Hazard areas' }),
      h('p', { class: 'note', text: data.areas.length + ' areas; colour: status, outline: class (solid CHA, dashed SHA).' })));
    const W = 640, H = 520, P = 24;
    const svg = s('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'map', role: 'group', 'aria-label': 'Map of hazard areas' });
    svg.append(s('rect', { x: 0, y: 0, width: W, height: H, class: 'sea' }));
    const rows = [];
    const byId = new Map();
    if (data.bbox) {
      const [x0, y0, x1, y1] = data.bbox;
      const k = Math.cos(((y0 + y1) / 2) * Math.PI / 180);
      const sx = (x1 - x0) * k || 1e-6, sy = (y1 - y0) || 1e-6;
      const scale = Math.min((W - 2 * P) / sx, (H - 2 * P) / sy);
      const ox = (W - sx * scale) / 2, oy = (H - sy * scale) / 2;
      const px = (lon) => ox + (lon - x0) * k * scale;
      const py = (lat) => oy + (y1 - lat) * scale;
      for (const a of data.areas) {
        if (!a.rings.length) continue;
        let d = '';
        let cx = 0, cy = 0, n = 0;
        for (const ring of a.rings) {
          ring.forEach(([lon, lat], i) => { const X = px(lon), Y = py(lat); d += (i ? 'L' : 'M') + X.toFixed(1) + ' ' + Y.toFixed(1); cx += X; cy += Y; n += 1; });
          d += 'Z';
        }
        cx /= n; cy /= n;
        // Polygons a few hundred metres wide are specks at country scale: a marker sized by
        // the baseline keeps each area visible and focusable.
        const r = Math.max(4, Math.min(16, Math.sqrt(a.baseline_m2) / 45));
        const g = s('g', { class: 'area ' + a.class + ' st-' + a.status, tabindex: 0, 'data-area': a.id, 'data-key': 'area-' + a.id,
          role: 'button', 'aria-label': a.code + ' ' + a.name + ', ' + label(a.status) + ', ' + a.class.toUpperCase() + ', ' + fmt(a.remaining_m2) + ' m² remaining',
          onclick: () => select(a.id), onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(a.id); } } },
        s('title', { text: a.code + ' · ' + a.name + ' (' + a.admin_area + ')\n' + label(a.status) + ' · ' + a.class.toUpperCase() + ' · ' + fmt(a.remaining_m2) + ' of ' + fmt(a.baseline_m2) + ' m² remaining' }),
        s('circle', { cx: cx.toFixed(1), cy: cy.toFixed(1), r: r.toFixed(1), fill: COLORS[a.status] || '#777', class: 'marker' }),
        s('path', { d, 'fill-rule': 'evenodd', fill: COLORS[a.status] || '#777', class: 'poly' }));
        svg.append(g);
        byId.set(a.id, g);
      }
    }
    function select(id) {
      for (const el of svg.querySelectorAll('.area.sel')) el.classList.remove('sel');
      for (const el of body.querySelectorAll('tr.sel')) el.classList.remove('sel');
      const g = byId.get(id); if (g) { g.classList.add('sel'); svg.appendChild(g); }
      const tr = body.querySelector('tr[data-area="' + CSS.escape(id) + '"]'); if (tr) { tr.classList.add('sel'); tr.scrollIntoView({ block: 'nearest' }); }
    }
    for (const a of data.areas) {
      rows.push(h('tr', { 'data-area': a.id },
        h('th', { scope: 'row' }, h('button', { class: 'link', 'data-key': 'locate-' + a.id, 'aria-label': 'Show ' + a.code + ' on the map', onclick: () => { select(a.id); const g = byId.get(a.id); if (g) g.focus(); }, text: a.code })),
        h('td', {}, h('span', { class: 'area-name', text: a.name }), h('br'), h('small', { class: 'note', text: a.admin_area })),
        h('td', { text: a.class.toUpperCase() }), h('td', {}, h('span', { class: 'dot st-' + a.status }), ' ' + label(a.status)),
        h('td', { class: 'n', text: a.priority }), h('td', { class: 'n', text: fmt(a.baseline_m2) }), h('td', { class: 'n', text: fmt(a.remaining_m2) }),
        a.geometry_error ? h('td', { class: 'error', text: a.geometry_error }) : null));
    }
    const tbl = h('table', { class: 'areas' },
      h('thead', {}, h('tr', {}, ['Code', 'Name and area', 'Class', 'Status', 'Priority', 'Baseline m²', 'Remaining m²'].map((x) => h('th', { scope: 'col', text: x })))),
      h('tbody', {}, rows));
    body.append(h('div', { class: 'mapgrid' },
      h('figure', { class: 'mapbox' }, svg, legend([[0, 'Active', COLORS.active], [0, 'In progress', COLORS.in_progress], [0, 'Released', COLORS.released]])),
      h('div', { class: 'tablebox' }, tbl)));
  }

  // ---------- conflicts ----------
  async function conflictsView(body) {
    const [list, areas] = await Promise.all([api(cpath('conflicts')), api(cpath('areas')).catch(() => ({ areas: [] }))]);
    const names = new Map(areas.areas.map((a) => [a.id, a.code + ' · ' + a.name]));
    const can = state.me.can_resolve;
    body.append(h('div', { class: 'viewhead' }, h('h2', { id: 'view-h', text: 'Conflicts (' + list.length + ')' }),
      h('p', { class: 'note', text: can ? 'Fields edited concurrently on different devices. Keeping a value writes it again as your decision; every device gets it at its next sync.'
        : 'Fields edited concurrently on different devices. Only a coordinator can decide which value to keep.' })));
    if (!list.length) { body.append(h('p', { class: 'empty', text: 'Nothing is in conflict.' })); return; }
    const ul = h('ul', { class: 'conflicts' });
    for (const c of list) {
      const what = (names.get(c.id) || c.id);
      const key = c.doc + '/' + c.collection + '/' + c.id + '/' + c.field;
      ul.append(h('li', { class: 'card conflict', 'data-conflict': key },
        h('h3', {}, label(c.collection) + ' ', h('span', { class: 'mono', text: what }), ' — ', c.field === '*' ? 'whole entry' : 'field “' + c.field + '”'),
        h('table', {}, h('thead', {}, h('tr', {}, ['Value', 'Author', 'Device', 'Time', can ? 'Decision' : null].filter(Boolean).map((x) => h('th', { scope: 'col', text: x })))),
          h('tbody', {}, c.values.map((v) => h('tr', {},
            h('td', { class: 'value', text: valueText(v.value) }),
            h('td', { text: (v.user || 'unknown') + (v.org ? ' (' + v.org + ')' : '') }),
            h('td', { text: v.device || '–' }),
            h('td', {}, h('time', { datetime: new Date(v.time * 1000).toISOString(), text: timeOf(v.time) })),
            can ? h('td', {}, h('button', { class: 'keep', 'data-key': 'keep-' + v.change, 'data-change': v.change,
              'aria-label': 'Keep “' + valueText(v.value) + '” by ' + (v.user || 'unknown'),
              onclick: (e) => resolve(c, v, e.currentTarget), text: 'Keep this value' })) : null))))));
    }
    body.append(ul);
  }
  async function resolve(c, v, button) {
    button.disabled = true;
    try {
      await api(cpath('conflicts/resolve'), { method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ doc: c.doc, collection: c.collection, id: c.id, field: c.field, change: v.change }) });
      toast('Kept “' + valueText(v.value) + '”. Devices get the decision at their next sync.');
      await renderCoalition(false);
      const first = $('#view button.keep') || $('#view h2'); if (first) first.focus && first.focus();
    } catch (x) {
      button.disabled = false;
      toast(x.code === 'not_in_conflict' ? 'Someone decided this already; the list is refreshed.' : 'Not resolved: ' + x.message, true);
      if (x.code === 'not_in_conflict') renderCoalition(false);
    }
  }

  // ---------- history ----------
  async function historyView(body) {
    const f = state.historyFilter || (state.historyFilter = { user: '', org: '', kind: '', entity: '' });
    if (!state.historyAll) state.historyAll = await api(cpath('history'));
    const all = state.historyAll;
    const q = new URLSearchParams();
    for (const k of ['user', 'org', 'kind', 'entity']) if (f[k]) q.set(k, f[k]);
    const list = q.toString() ? await api(cpath('history') + '?' + q) : all;
    const opts = (k) => [...new Set(all.map((e) => e[k]).filter(Boolean))].sort();
    const select = (name, text, values, cur) => h('div', { class: 'field' }, h('label', { for: 'f-' + name, text }),
      h('select', { id: 'f-' + name, name, 'data-key': 'f-' + name }, h('option', { value: '', text: 'anyone / anything' }),
        values.map((v) => h('option', { value: v, selected: v === cur, text: label(v) }))));
    const form = h('form', { class: 'filters', onsubmit: (e) => {
      e.preventDefault();
      const el = form.elements;
      state.historyFilter = { user: el.user.value, org: el.org.value, kind: el.kind.value, entity: el.entity.value.trim() };
      state.historyShown = 200;
      renderCoalition(false);
    } },
    select('user', 'Person', opts('user'), f.user), select('org', 'Organisation', opts('org'), f.org), select('kind', 'Entity kind', opts('entity'), f.kind),
    h('div', { class: 'field' }, h('label', { for: 'f-entity', text: 'Entity id' }), h('input', { id: 'f-entity', name: 'entity', value: f.entity, 'data-key': 'f-entity', autocomplete: 'off' })),
    h('button', { type: 'submit', class: 'primary', 'data-key': 'f-apply', text: 'Filter' }),
    h('button', { type: 'button', 'data-key': 'f-reset', text: 'Clear', onclick: () => { state.historyFilter = null; renderCoalition(false); } }));

    const atForm = h('form', { class: 'inline', onsubmit: async (e) => {
      e.preventDefault();
      state.atDate = atForm.elements.at.value;
      await showAt(atOut);
    } }, h('label', { for: 'at', text: 'The plan as it was on' }), h('input', { type: 'date', id: 'at', name: 'at', required: true, value: state.atDate || '', 'data-key': 'at' }),
    h('button', { type: 'submit', text: 'Show', 'data-key': 'at-go' }));
    const atOut = h('div', { 'aria-live': 'polite' });
    if (state.atDate) await showAt(atOut);

    body.append(h('div', { class: 'viewhead' }, h('h2', { id: 'view-h', text: 'History' }), h('p', { class: 'note', text: list.length + ' of ' + all.length + ' changes' })),
      form, panel('Plan at a date', atForm, atOut));
    const shown = list.slice().reverse().slice(0, state.historyShown);
    const ol = h('ol', { class: 'timeline' });
    let day = '';
    for (const e of shown) {
      const d = dateOf(e.time);
      if (d !== day) { day = d; ol.append(h('li', { class: 'day' }, h('h3', { text: d }))); }
      ol.append(h('li', { class: 'entry' },
        h('time', { datetime: new Date(e.time * 1000).toISOString(), text: timeOf(e.time).slice(11) }),
        h('span', { class: 'author', text: (e.user || 'unknown') + (e.org ? ' (' + e.org + ')' : '') + (e.device ? ' on ' + e.device : '') }),
        h('span', { class: 'what', text: [e.action, e.entity && label(e.entity)].filter(Boolean).join(' ') }),
        e.id ? h('button', { class: 'link mono', 'data-key': 'h-' + e.change, title: 'Only this entity', text: e.id,
          onclick: () => { state.historyFilter = { user: '', org: '', kind: '', entity: e.id }; renderCoalition(false); } }) : null,
        e.fields.length ? h('span', { class: 'fields', text: e.fields.join(', ') }) : null));
    }
    body.append(ol);
    if (list.length > shown.length) {
      body.append(h('button', { 'data-key': 'more', text: 'Show older changes', onclick: () => { state.historyShown += 500; renderCoalition(false); } }));
    }
  }
  async function showAt(out) {
    clear(out);
    try {
      const r = await api(cpath('at') + '?date=' + encodeURIComponent(state.atDate));
      out.append(h('dl', { class: 'figs small' },
        figure(r, 'clearance.remaining_sha_m2', 'Remaining SHA', { unit: 'm²' }),
        figure(r, 'clearance.remaining_cha_m2', 'Remaining CHA', { unit: 'm²' }),
        figure(r, 'clearance.released_m2', 'Released', { unit: 'm²' }),
        figure(r, 'hazard_areas', 'Hazard areas'),
        figure(r, 'members', 'Members'),
        figure(r, 'release_entries', 'Release entries')));
    } catch (x) { out.append(h('p', { class: 'error', text: x.message })); }
  }

  // ---------- sync health ----------
  async function health(body) {
    const hh = await api(cpath('health'));
    body.append(h('div', { class: 'viewhead' }, h('h2', { id: 'view-h', text: 'Sync health' })));
    const stale = (d) => !d.revoked_at && (!d.last_seen_at || Date.now() / 1000 - d.last_seen_at > 30 * 86400);
    body.append(h('dl', { class: 'figs' },
      figure(hh, 'pending_approvals', 'Entries awaiting approval'),
      figure(hh, 'pending_m2', 'm² awaiting approval'),
      figure(hh, 'open_conflicts', 'Open conflicts'),
      figure(hh, 'refused_documents', 'Documents refused (relay, since start)'),
      figure(hh, 'connections', 'Devices connected now'),
      h('div', { class: 'fig' }, h('dt', { text: 'Devices not seen for 30 days' }), h('dd', { text: fmt(hh.devices.filter(stale).length) }))));
    body.append(panel('Devices (' + hh.devices.length + ')', h('div', { class: 'scroll' }, table(['Device', 'Person', 'Organisation', 'Role', 'Enrolled', 'Last seen', 'Status'],
      hh.devices.map((d) => [d.name, d.user, d.org, d.role, dateOf(d.enrolled_at),
        h('span', { title: timeOf(d.last_seen_at), text: ago(d.last_seen_at) }),
        d.revoked_at ? h('span', { class: 'short', text: 'revoked ' + dateOf(d.revoked_at) }) : stale(d) ? h('span', { class: 'warn', text: 'not seen for 30 days' }) : 'ok'])))));
  }

  // ---------- Article 7 ----------
  async function article7(body) {
    const asOf = state.a7Date || today();
    const a = await api(cpath('article7') + '?as_of=' + encodeURIComponent(asOf));
    const download = async (format, ext, button) => {
      button.disabled = true;
      try {
        const res = await fetch(cpath('article7') + '?format=' + format + '&as_of=' + encodeURIComponent(asOf), { headers: { Authorization: 'Bearer ' + state.token } });
        if (!res.ok) throw new Error('HTTP ' + res.status);
        const blob = await res.blob();
        const url = URL.createObjectURL(blob);
        const link = h('a', { href: url, download: 'article7-' + a.state + '-' + a.year + '.' + ext });
        document.body.append(link); link.click(); link.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
      } catch (x) { toast('Download failed: ' + x.message, true); } finally { button.disabled = false; }
    };
    const form = h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); state.a7Date = form.elements.a7.value; renderCoalition(false); } },
      h('label', { for: 'a7', text: 'Drafted as of' }), h('input', { type: 'date', id: 'a7', name: 'a7', value: asOf, 'data-key': 'a7' }),
      h('button', { type: 'submit', text: 'Show', 'data-key': 'a7-go' }));
    body.append(h('div', { class: 'viewhead noprint' }, h('h2', { id: 'view-h', text: 'Article 7 report, forms F–I (draft)' }), form),
      h('p', { class: 'actions noprint' },
        h('button', { 'data-key': 'dl-md', onclick: (e) => download('md', 'md', e.currentTarget), text: 'Download Markdown' }),
        h('button', { 'data-key': 'dl-html', onclick: (e) => download('html', 'html', e.currentTarget), text: 'Download printable HTML' }),
        h('button', { 'data-key': 'print', onclick: () => window.print(), text: 'Print' })));
    const f = a.form_f;
    const doc = h('article', { class: 'a7' }, h('h2', { class: 'printonly', text: 'Article 7 report (draft) — ' + a.state + ' — ' + a.year }));
    doc.append(h('h3', { text: 'Form F — Cluster munition contaminated areas and clearance' }),
      h('p', { text: 'Remaining: ' + fmt(f.remaining_sha_m2) + ' m² suspected (SHA), ' + fmt(f.remaining_cha_m2) + ' m² confirmed (CHA). Deadline in force: ' +
        (f.deadline || 'not set') + '. Projected completion: ' + (f.projected_completion || 'no release in the last 12 months') + '.' }),
      h('div', { class: 'scroll' }, table(['Code', 'Name', 'Area', 'Class', 'Baseline m²', 'Remaining m²', 'Status'],
        f.areas.map((x) => [x.code, x.name, x.admin_area, x.class.toUpperCase(), x.baseline_m2, x.remaining_m2, label(x.status)]))),
      table(['Year', 'Cancelled m²', 'Reduced m²', 'Cleared m²', 'Items destroyed'], f.released_by_year.map((y) => [String(y.year), y.cancelled_m2, y.reduced_m2, y.cleared_m2, y.items])),
      h('h3', { text: 'Form G — Risk reduction education' }),
      (a.form_g.narrative || '').trim() ? a.form_g.narrative.trim().split(/\n\n+/).map((p) => h('p', { text: p })) : h('p', { text: '(no narrative yet)' }),
      h('h3', { text: 'Form H — Victim assistance' }),
      table(['Year', 'Killed', 'Injured', 'Survivors', 'Assisted'], a.form_h.years.map((y) => [String(y.year), y.killed ?? '–', y.injured ?? '–', y.survivors ?? '–', y.assisted ?? '–'])),
      h('h3', { text: 'Form I — Resources and cooperation' }),
      h('div', { class: 'scroll' }, table(['Source', 'Pillar', 'Years', 'Amount', 'Currency', 'Status'],
        a.form_i.lines.map((l) => [l.source, label(l.pillar), l.years, l.amount, l.currency, label(l.status)]))),
      h('p', { text: 'Unfunded needs (USD): ' + a.form_i.gap_by_pillar_usd.map(([p, g]) => label(p) + ' ' + fmt(g)).join(', ') + '.' }));
    body.append(doc);
  }

  // ---------- start ----------
  window.addEventListener('hashchange', () => { if (state.token) route(); });
  document.addEventListener('DOMContentLoaded', async () => {
    const token = stored();
    if (!token) return showSignIn();
    try { await signIn(token, !!localStorage.getItem(KEY)); } catch (x) { showSignIn(x.message); }
  });
})();
