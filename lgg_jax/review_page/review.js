// The review page: a sortable table of patients from review.json, and the
// opened patient's volumes in NiiVue (fetched only when the patient is opened).
import { Niivue, SLICE_TYPE } from './niivue/niivue.js';

const SEQUENCES = { flair: 'FLAIR', pre: 'pre-contrast', post: 'post-contrast' };
// Overlay layers, bottom to top: colour map, display range, colour bar, shown on opening.
const LAYERS = {
  truth: { label: 'truth', colormap: 'green', cal_min: 0.5, cal_max: 1, bar: false, on: true, swatch: '#0f0' },
  mask: { label: 'prediction', colormap: 'red', cal_min: 0.5, cal_max: 1, bar: false, on: true, swatch: '#f00' },
  errors: { label: 'found / false positive / missed', colormap: 'lgg_errors', cal_min: 0, cal_max: 3, bar: false,
            on: false, swatch: null },
  probabilities: { label: 'probability', colormap: 'warm', cal_min: 0.05, cal_max: 1, bar: true, on: false,
                   swatch: null },
  uncertainty: { label: 'uncertainty', colormap: 'winter', cal_min: 0.01, cal_max: 0.5, bar: true, on: false,
                 swatch: null },
};
// 1 found (yellow), 2 false positive (magenta), 3 missed (cyan): lgg_jax.review's labels.
const ERROR_COLOURS = { R: [0, 255, 255, 0], G: [0, 200, 0, 200], B: [0, 0, 255, 255], A: [0, 255, 255, 255],
                        I: [0, 85, 170, 255] }; // NiiVue wants indices 0..255: cal 0..3 puts label k at 85 k
const COLUMNS = [
  ['case', 'patient', (v) => v],
  ['slices', 'slices', (v) => v],
  ['predicted_volume_ml', 'volume (ml)', (v) => v.toFixed(1)],
  ['predicted_voxels', 'predicted voxels', (v) => v],
  ['quality', 'quality', (v) => v.toFixed(3)],
  ['review', 'review', (v, row) => (v ? row.review_reason || 'flagged' : '')],
  ['dice', 'Dice', (v) => v.toFixed(3)],
  ['hd95_px', 'HD95 (px)', (v) => (Number.isFinite(v) ? v.toFixed(1) : 'n/a')],
];

const state = {
  about: null, base: '', rows: [], columns: [], sortKey: null, sortAscending: true, open: -1,
  nv: null, sequence: 'flair', layers: {}, names: [], slices: 1, slice: 0, multiplanar: false, ready: false,
};
window.review = state; // the browser test reads the page's state here

const $ = (id) => document.getElementById(id);

function defaultOrder(a, b) { // flagged first, then worst first (Dice where every patient has one)
  if (a.review !== b.review) return a.review ? -1 : 1;
  const key = state.rows.every((r) => Number.isFinite(r.dice)) ? 'dice' : 'quality';
  return (a[key] ?? 0) - (b[key] ?? 0);
}

function sortRows() {
  const key = state.sortKey;
  if (key === null) {
    state.rows.sort(defaultOrder);
    return;
  }
  const sign = state.sortAscending ? 1 : -1;
  state.rows.sort((a, b) => {
    const x = a[key], y = b[key];
    if (x === y) return defaultOrder(a, b);
    if (x === undefined || x === null) return 1;
    if (y === undefined || y === null) return -1;
    return (typeof x === 'string' ? x.localeCompare(y) : (x < y ? -1 : 1)) * sign;
  });
}

function renderTable() {
  const head = document.querySelector('#patients thead tr');
  head.replaceChildren(...state.columns.map(([key, label]) => {
    const th = document.createElement('th');
    th.textContent = label;
    th.dataset.key = key;
    if (key === state.sortKey) th.className = state.sortAscending ? 'sorted-asc' : 'sorted-desc';
    th.addEventListener('click', () => {
      state.sortAscending = state.sortKey === key ? !state.sortAscending : true;
      state.sortKey = key;
      const opened = state.rows[state.open];
      sortRows();
      state.open = state.rows.indexOf(opened);
      renderTable();
    });
    return th;
  }));
  const body = document.querySelector('#patients tbody');
  body.replaceChildren(...state.rows.map((row, i) => {
    const tr = document.createElement('tr');
    tr.dataset.case = row.case;
    if (row.review) tr.classList.add('flagged');
    if (i === state.open) tr.classList.add('open');
    for (const [key, , format] of state.columns) {
      const td = document.createElement('td');
      const value = row[key];
      td.textContent = value === undefined || value === null ? '' : format(value, row);
      if (key === 'review') td.className = 'reason';
      if (key === 'dice' && value < 0.7) td.classList.add('low');
      tr.append(td);
    }
    tr.addEventListener('click', () => openPatient(i));
    return tr;
  }));
}

function encodePath(path) {
  return path.split('/').map(encodeURIComponent).join('/');
}

function fileUrl(row, layer) {
  return '/files/' + encodePath(state.base + row.files[layer]);
}

function setSlice(k) {
  const nv = state.nv;
  k = Math.max(0, Math.min(state.slices - 1, k));
  const frac = nv.scene.crosshairPos;
  nv.scene.crosshairPos = [frac[0], frac[1], (k + 0.5) / state.slices];
  nv.createOnLocationChange();
  nv.drawScene();
  showSlice(k);
}

function showSlice(k) {
  state.slice = k;
  $('slice').value = String(k);
  $('slice-number').textContent = `${k + 1} / ${state.slices}`;
}

function showBars() {
  let bars = false;
  state.names.forEach((name, index) => {
    if (index === 0) return;
    const visible = state.layers[name] && LAYERS[name].bar;
    state.nv.volumes[index].colorbarVisible = visible;
    bars = bars || visible;
  });
  state.nv.opts.isColorbar = bars;
}

function applyLayers() {
  if (!state.ready) return; // the volumes are still loading: applied when they are drawn
  // Opacities set directly, then one texture update (NiiVue's setOpacity updates once per call).
  const opacity = Number($('opacity').value);
  state.names.forEach((name, index) => {
    if (index > 0) state.nv.volumes[index].opacity = state.layers[name] ? opacity : 0;
  });
  showBars();
  state.nv.updateGLVolume();
}

function renderControls(row) {
  $('sequences').replaceChildren($('sequences').firstElementChild, ...Object.entries(SEQUENCES)
    .filter(([key]) => row.files[key]).map(([key, label]) => {
      const input = Object.assign(document.createElement('input'),
                                  { type: 'radio', name: 'sequence', value: key, checked: key === state.sequence });
      input.addEventListener('change', () => { state.sequence = key; openPatient(state.open); });
      const wrap = document.createElement('label');
      wrap.append(input, ` ${label} `);
      return wrap;
    }));
  $('layers').replaceChildren($('layers').firstElementChild, ...state.names.slice(1).map((name) => {
    const input = Object.assign(document.createElement('input'),
                                { type: 'checkbox', checked: state.layers[name], id: `layer-${name}` });
    input.addEventListener('change', () => { state.layers[name] = input.checked; applyLayers(); });
    const wrap = document.createElement('label');
    wrap.append(input, ` ${LAYERS[name].label} `);
    return wrap;
  }));
  $('legend').innerHTML = state.names.includes('errors')
    ? 'errors: <span class="swatch" style="background:#ffc800"></span>found'
      + '<span class="swatch" style="background:#f0f"></span>false positive'
      + '<span class="swatch" style="background:#0cf"></span>missed'
    : '';
  $('downloads').replaceChildren('NIfTI files (ITK-SNAP, 3D Slicer): ', ...Object.keys(row.files).map((layer) => {
    const a = Object.assign(document.createElement('a'), { href: fileUrl(row, layer), textContent: row.files[layer] });
    a.setAttribute('download', '');
    const span = document.createElement('span');
    span.append(a, ' ');
    return span;
  }));
  $('multiplanar').hidden = !row.nifti_input;
}

let loading = Promise.resolve(); // NiiVue loads one patient at a time
let request = 0; // the newest open request; an older one stops where it stands

function openPatient(i) {
  if (i < 0 || i >= state.rows.length || !state.nv) return loading;
  const row = state.rows[i];
  const mine = ++request;
  state.open = i;
  state.ready = false;
  renderTable();
  loading = loading.then(() => (mine === request ? show(row, mine) : undefined)).catch((error) => {
    console.error(error);
    $('patient-facts').textContent = `error: ${error.message}`;
  });
  return loading;
}

async function show(row, mine) {
  $('viewer').hidden = false;
  $('patient-name').textContent = row.case;
  $('patient-facts').textContent = [row.review ? `flagged: ${row.review_reason}` : 'not flagged',
    Number.isFinite(row.dice) ? `Dice ${row.dice.toFixed(3)}` : ''].filter(Boolean).join(', ');
  if (!row.files[state.sequence]) state.sequence = 'flair';
  const opacity = Number($('opacity').value);
  const list = [{ url: fileUrl(row, state.sequence), colormap: 'gray' }];
  const names = ['image'];
  for (const [name, spec] of Object.entries(LAYERS)) {
    if (!row.files[name]) continue;
    if (!(name in state.layers)) state.layers[name] = spec.on;
    list.push({ url: fileUrl(row, name), colormap: spec.colormap, cal_min: spec.cal_min, cal_max: spec.cal_max,
                opacity: state.layers[name] ? opacity : 0 });
    names.push(name);
  }
  const started = performance.now();
  await state.nv.loadVolumes(list);
  if (mine !== request) return; // another patient was asked for meanwhile: it loads next
  const loaded = performance.now();
  state.names = names;
  state.slices = state.nv.volumes[0].dimsRAS[3];
  $('slice').max = String(state.slices - 1);
  if (!row.nifti_input && state.multiplanar) { // multiplanar is for NIfTI input only
    state.multiplanar = false;
    state.nv.setSliceType(SLICE_TYPE.AXIAL);
    $('multiplanar').textContent = 'multiplanar';
  }
  renderControls(row);
  showBars(); // the opacities came with the volumes
  setSlice(row.focus_slice ?? Math.floor(state.slices / 2));
  state.openTimes = { loadMs: loaded - started, totalMs: performance.now() - started }; // for the benchmark
  state.ready = true;
}

function drawCurves(text) {
  const records = [];
  for (const line of text.split('\n')) { // a line being written, or one with NaN, is skipped
    try {
      const record = JSON.parse(line);
      if (record && record.step !== undefined) records.push(record);
    } catch (error) { /* not a whole JSON line */ }
  }
  if (!records.length) return;
  const series = [['train_loss', '#1565c0', 'train loss'], ['val_dice', '#c62828', 'validation Dice']]
    .filter(([key]) => records.some((r) => Number.isFinite(r[key])));
  const width = 520, height = 160, pad = 28;
  const steps = records.map((r) => r.step), x0 = Math.min(...steps), x1 = Math.max(...steps) || 1;
  const values = series.flatMap(([key]) => records.map((r) => r[key]).filter(Number.isFinite));
  const y0 = Math.min(0, ...values), y1 = Math.max(1, ...values);
  const px = (s) => pad + (width - 2 * pad) * (x1 === x0 ? 0.5 : (s - x0) / (x1 - x0));
  const py = (v) => height - pad - (height - 2 * pad) * (v - y0) / (y1 - y0);
  const lines = series.map(([key, colour]) => {
    const points = records.filter((r) => Number.isFinite(r[key])).map((r) => `${px(r.step)},${py(r[key])}`);
    return `<polyline fill="none" stroke="${colour}" stroke-width="1.5" points="${points.join(' ')}"/>`;
  });
  const labels = series.map(([, colour, label], k) =>
    `<text x="${pad + 150 * k}" y="14" fill="${colour}" font-size="12">${label}</text>`);
  $('curves').innerHTML = `<svg width="${width}" height="${height}">${lines.join('')}${labels.join('')}`
    + `<text x="${pad}" y="${height - 8}" font-size="11">step ${x0}</text>`
    + `<text x="${width - pad - 60}" y="${height - 8}" font-size="11">step ${x1}</text></svg>`;
  $('curves').hidden = false;
}

function onKey(event) {
  // Keys typed into a field, and a slider's own arrow keys, are theirs (a checkbox has none).
  if (event.target.matches('input[type=range], input[type=text], input[type=number], input[type=search], textarea, select')) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return; // Ctrl+P prints, not "previous patient"
  const step = { ArrowUp: 1, ArrowDown: -1 }[event.key];
  if (step !== undefined && state.ready) {
    setSlice(state.slice + step);
  } else if (event.key === 'n' || event.key === 'PageDown') {
    openPatient(Math.min(state.open + 1, state.rows.length - 1));
  } else if (event.key === 'p' || event.key === 'PageUp') {
    openPatient(Math.max(state.open - 1, 0));
  } else {
    return;
  }
  event.preventDefault();
  event.stopPropagation(); // NiiVue's own arrow keys would move the crosshair a second time
}

async function fetched(url, what) {
  // A file the server cannot give is an error naming it, not a JSON parse error.
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${what} (${url}): ${response.status} ${response.statusText}`);
  return response;
}

async function main() {
  state.about = await (await fetched('/api/about', 'the review server')).json();
  $('title').textContent = `lgg_jax review: ${state.about.title}`;
  document.title = `review: ${state.about.title}`;
  if (state.about.curves) {
    try {
      drawCurves(await (await fetched(`/files/${encodePath(state.about.curves)}`, 'the training curves')).text());
    } catch (error) {
      console.warn('training curves not shown:', error);
    }
  }
  if (!state.about.index) {
    $('no-index').textContent = 'No evaluation yet: python -m lgg_jax.evaluate --workdir=<this run> writes one.';
    $('no-index').hidden = false;
    return;
  }
  state.base = state.about.index.includes('/') ? state.about.index.replace(/[^/]*$/, '') : '';
  const index = await (await fetched(`/files/${encodePath(state.about.index)}`, 'the index')).json();
  state.rows = index.cases;
  state.columns = COLUMNS.filter(([key]) => state.rows.some((r) => r[key] !== undefined && r[key] !== null));
  const flagged = state.rows.filter((r) => r.review).length;
  $('summary').textContent = `${index.kind}: ${state.rows.length} patients, ${flagged} flagged for review`
    + (index.inference ? `; threshold ${index.inference.threshold}, TTA ${index.inference.tta}` : '');
  sortRows();
  renderTable();
  state.tableReadyMs = performance.now(); // benchmarks/review_page.py reads it
  state.nv = new Niivue({ isRadiologicalConvention: true, backColor: [0, 0, 0, 1], show3Dcrosshair: false,
                          crosshairColor: [1, 1, 0, 0.6], crosshairWidth: 1, isColorbar: false });
  state.nv.addColormap('lgg_errors', ERROR_COLOURS);
  await state.nv.attachToCanvas($('gl'));
  state.nv.setSliceType(SLICE_TYPE.AXIAL);
  state.nv.onLocationChange = (data) => {
    if (state.slices > 1) showSlice(Math.min(state.slices - 1, Math.floor(data.frac[2] * state.slices)));
  };
  $('slice').addEventListener('input', () => { if (state.ready) setSlice(Number($('slice').value)); });
  $('opacity').addEventListener('input', applyLayers);
  $('multiplanar').addEventListener('click', () => {
    state.multiplanar = !state.multiplanar;
    state.nv.setSliceType(state.multiplanar ? SLICE_TYPE.MULTIPLANAR : SLICE_TYPE.AXIAL);
    $('multiplanar').textContent = state.multiplanar ? 'axial' : 'multiplanar';
  });
  document.addEventListener('keydown', onKey, true);
  state.tableReady = true;
}

main().catch((error) => {
  console.error(error);
  $('summary').textContent = `error: ${error.message}`;
});
