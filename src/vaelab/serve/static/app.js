// vaelab latent space explorer: the page's behaviour. Plain JavaScript, no framework, no network
// beyond this server's JSON API (see src/vaelab/serve/app.py for the endpoints).
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const MAX_UPLOAD = 5 * 1024 * 1024;
const $ = (id) => document.getElementById(id);

const state = {
  info: null,       // GET /api/info
  map: null,        // GET /api/map
  z: null,          // the latent now decoded (the sliders' values)
  origin: null,     // the chosen point the sliders started from
  hovered: -1,      // index of the test example under the pointer
  upload: null,     // [x, y] of the last upload on the map
  path: null,       // the interpolation path on the map: {coords, a, b}
  ends: {a: {index: 0}, b: {index: 1}},
  cls: null,        // the class every decoded image is generated under (a name; conditional models, M2)
  contextOf: null,  // the test example whose covariates are used (models with continuous covariates)
  sampleSeed: 1,    // the samples' seed: a new one per click, the same one when the class changes
  file: null,       // the last uploaded file (a conditional model rescores it under a new class)
};

// ---------------------------------------------------------------------------------- plumbing
async function api(path, options) {
  const res = await fetch(path, options);
  let body;
  try { body = await res.json(); } catch (e) { body = {error: `${res.status} ${res.statusText}`}; }
  if (!res.ok) {
    const err = new Error(body.error || `${res.status} ${res.statusText}`);
    err.status = res.status;
    throw err;
  }
  return body;
}

const post = (path, doc) => api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(doc)});

// At most one call of fn in flight; calls made meanwhile collapse into the latest one, so quick
// slider moves or pointer moves never queue work. A 503 (server busy) retries the latest soon.
function latestOnly(fn) {
  let busy = false, waiting = false, next;
  async function pump(arg) {
    busy = true;
    try {
      await fn(arg);
    } catch (err) {
      if (err.status === 503) { if (!waiting) { waiting = true; next = arg; } await sleep(120); }
      else toast(err.message);
    }
    busy = false;
    if (waiting) { waiting = false; pump(next); }
  }
  return (arg) => { if (busy) { waiting = true; next = arg; } else pump(arg); };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let toastTimer = 0;
function toast(message) {
  const t = $("toast");
  t.textContent = message;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 7000);
}

const fmt = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d).replace("-", "−"));
const dimName = (d) => `z${d + 1}`;

function el(tag, props = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// ------------------------------------------------------------------------ drawing an example
// An example is {png: data URL} (images) or {values: [...]} (vectors, drawn as a bar chart).
function show(box, item) {
  box.classList.remove("placeholder");
  box.replaceChildren(item.png ? el("img", {src: item.png, alt: "decoded example"}) : bars(item.values, box));
  box.dataset.key = item.png || item.values.join(",");
}

function bars(values, box) {
  const c = document.createElement("canvas");
  const w = box.clientWidth || 170, h = box.clientHeight || 96, dpr = window.devicePixelRatio || 1;
  c.width = w * dpr; c.height = h * dpr;
  const g = c.getContext("2d");
  g.scale(dpr, dpr);
  let [lo, hi] = state.info.x_range;
  lo = Math.min(lo, 0, ...values); hi = Math.max(hi, 0, ...values);
  if (hi - lo < 1e-9) { hi = lo + 1; }
  const pad = 4, y = (v) => pad + (h - 2 * pad) * (hi - v) / (hi - lo), bw = (w - 2 * pad) / values.length;
  g.strokeStyle = "#c3c8d2"; g.beginPath(); g.moveTo(pad, y(0)); g.lineTo(w - pad, y(0)); g.stroke();
  values.forEach((v, i) => {
    g.fillStyle = v >= 0 ? "#4f46e5" : "#e8590c";
    const top = Math.min(y(v), y(0)), height = Math.max(1, Math.abs(y(v) - y(0)));
    g.fillRect(pad + i * bw + bw * 0.12, top, Math.max(1, bw * 0.76), height);
  });
  return c;
}

// ------------------------------------------------------------------------------- the header
function summary(info) {
  const chip = (label, value) => el("span", {class: "chip"}, [label + " ", el("b", {text: value})]);
  const shape = info.x_shape.join(" × ");
  const net = `${info.net.toUpperCase()} ${info.hidden.join("–")}`;
  const parts = [
    chip("run", info.run), chip("data", `${info.data} (${shape} ${info.x_kind}s)`),
    chip("latent", `${info.latent_dim}-D`), chip("network", net), chip("likelihood", info.likelihood),
    chip("posterior", info.posterior), chip("prior", info.prior),
    chip("trained", `${info.epochs} epoch${info.epochs === 1 ? "" : "s"}`),
  ];
  if (info.best_val_elbo !== null) parts.push(chip("best validation ELBO", `${fmt(info.best_val_elbo)} nats`));
  const active = info.dims.filter((d) => d.active).length;
  if (info.dims[0].active !== null) parts.push(chip("active dimensions", `${active} of ${info.latent_dim}`));
  $("summary").replaceChildren(...parts);
}

// ---------------------------------------------------------------------------------- the map
const mapView = {size: 0, half: 1, pad: 30, base: null};

function toPlane(z) {  // latent [D] -> map [x, y], as the server's Projection.to_plane
  const p = state.info.projection;
  return p.components.map((row) => row.reduce((s, c, i) => s + c * (z[i] - p.center[i]), 0));
}

function px([x, y]) {
  const {size, half, pad} = mapView, r = size / 2 - pad;
  return [size / 2 + (x / half) * r, size / 2 - (y / half) * r];
}

function unpx(u, v) {
  const {size, half, pad} = mapView, r = size / 2 - pad;
  return [((u - size / 2) / r) * half, (-(v - size / 2) / r) * half];
}

function setupMap() {
  const canvas = $("map"), coords = state.map.coords;
  const size = canvas.clientWidth, dpr = window.devicePixelRatio || 1;
  if (!size) return;  // not laid out (e.g. mid-resize): keep the last drawing
  canvas.width = size * dpr; canvas.height = size * dpr;
  mapView.size = size;
  let far = 0;
  for (const [x, y] of coords) far = Math.max(far, Math.abs(x), Math.abs(y));
  mapView.half = Math.max(0.5, far * 1.12);  // the data fill the map; the origin stays in the middle
  // the points, drawn once into an offscreen canvas; overlays are drawn on top of a copy
  const base = document.createElement("canvas");
  base.width = canvas.width; base.height = canvas.height;
  const g = base.getContext("2d");
  g.scale(dpr, dpr);
  g.fillStyle = "#fcfcfd"; g.fillRect(0, 0, size, size);
  drawAxes(g);
  const labels = state.map.labels, classes = state.map.classes || [];
  g.globalAlpha = 0.75;
  coords.forEach((c, i) => {
    const [u, v] = px(c);
    g.fillStyle = labels ? PALETTE[classes.indexOf(labels[i]) % PALETTE.length] : "#4f46e5";
    g.beginPath(); g.arc(u, v, 3, 0, 2 * Math.PI); g.fill();
  });
  g.globalAlpha = 1;
  mapView.base = base;
  drawMap();
}

function drawAxes(g) {
  const {size, half, pad} = mapView, p = state.info.projection;
  const step = niceStep(half / 2.5), digits = step < 1 ? String(step).split(".")[1].length : 0;
  g.strokeStyle = "#eceef3"; g.lineWidth = 1; g.fillStyle = "#8a93a3"; g.font = "11px system-ui, sans-serif";
  for (let k = -Math.floor(half / step); k * step <= half; k++) {
    const t = k * step;
    const [u] = px([t, 0]), [, v] = px([0, t]);
    g.beginPath(); g.moveTo(u, pad - 6); g.lineTo(u, size - pad + 6); g.stroke();
    g.beginPath(); g.moveTo(pad - 6, v); g.lineTo(size - pad + 6, v); g.stroke();
    const label = k === 0 ? "0" : fmt(t, digits);
    g.textAlign = "center"; g.fillText(label, u, size - pad + 18);
    g.textAlign = "right"; g.fillText(label, pad - 9, v + 4);
  }
  g.strokeStyle = "#cfd3dc";
  const [u0, v0] = px([0, 0]);
  g.beginPath(); g.moveTo(u0, pad - 6); g.lineTo(u0, size - pad + 6); g.stroke();
  g.beginPath(); g.moveTo(pad - 6, v0); g.lineTo(size - pad + 6, v0); g.stroke();
  const [xl, yl] = p.kind === "pca"
    ? [`PC1 (${Math.round(p.explained[0] * 100)}%)`, `PC2 (${Math.round(p.explained[1] * 100)}%)`]
    : ["z1", state.info.latent_dim > 1 ? "z2" : ""];
  g.fillStyle = "#5d6678"; g.font = "600 12px system-ui, sans-serif";
  g.textAlign = "right"; g.fillText(xl, size - 8, size - pad - 6);
  g.save(); g.translate(pad + 14, 8); g.rotate(-Math.PI / 2); g.textAlign = "right"; g.fillText(yl, 0, 0); g.restore();
}

function niceStep(raw) {  // 1, 2 or 5 times a power of ten
  const p = 10 ** Math.floor(Math.log10(raw)), m = raw / p;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : 5) * p;
}

function drawMap() {
  if (!mapView.base) return;
  const canvas = $("map"), g = canvas.getContext("2d"), dpr = window.devicePixelRatio || 1;
  g.setTransform(1, 0, 0, 1, 0, 0);
  g.drawImage(mapView.base, 0, 0);
  g.scale(dpr, dpr);
  const {size, pad} = mapView;
  g.save();
  g.beginPath(); g.rect(pad - 6, pad - 6, size - 2 * pad + 12, size - 2 * pad + 12); g.clip();  // marks stay in the plot
  if (state.path) {
    g.strokeStyle = "rgba(29,36,51,.55)"; g.lineWidth = 1.5; g.beginPath();
    state.path.coords.forEach((c, i) => { const [u, v] = px(c); if (i) g.lineTo(u, v); else g.moveTo(u, v); });
    g.stroke();
    state.path.coords.forEach((c) => { const [u, v] = px(c); g.fillStyle = "#1d2433"; g.beginPath(); g.arc(u, v, 2, 0, 7); g.fill(); });
    endMark(g, state.path.coords[0], "A", "#e8590c");
    endMark(g, state.path.coords[state.path.coords.length - 1], "B", "#0b7285");
  }
  if (state.hovered >= 0) {
    const [u, v] = px(state.map.coords[state.hovered]);
    g.strokeStyle = "#1d2433"; g.lineWidth = 2; g.beginPath(); g.arc(u, v, 6, 0, 7); g.stroke();
  }
  if (state.upload) star(g, px(state.upload));
  if (state.z) {
    const [u, v] = px(toPlane(state.z));
    g.strokeStyle = "#fff"; g.lineWidth = 4; cross(g, u, v);
    g.strokeStyle = "#4f46e5"; g.lineWidth = 2; cross(g, u, v);
  }
  g.restore();
}

function cross(g, u, v) {
  g.beginPath(); g.arc(u, v, 7, 0, 7);
  g.moveTo(u - 12, v); g.lineTo(u - 4, v); g.moveTo(u + 4, v); g.lineTo(u + 12, v);
  g.moveTo(u, v - 12); g.lineTo(u, v - 4); g.moveTo(u, v + 4); g.lineTo(u, v + 12);
  g.stroke();
}

function endMark(g, c, text, colour) {
  const [u, v] = px(c);
  g.fillStyle = colour; g.beginPath(); g.arc(u, v, 8, 0, 7); g.fill();
  g.fillStyle = "#fff"; g.font = "700 10px system-ui, sans-serif"; g.textAlign = "center"; g.fillText(text, u, v + 3.5);
}

function star(g, [u, v]) {
  g.beginPath();
  for (let i = 0; i < 10; i++) {
    const r = i % 2 ? 4 : 10, a = -Math.PI / 2 + (i * Math.PI) / 5;
    g.lineTo(u + r * Math.cos(a), v + r * Math.sin(a));
  }
  g.closePath(); g.fillStyle = "#f59f00"; g.fill(); g.strokeStyle = "#fff"; g.lineWidth = 1.5; g.stroke();
}

function nearest(u, v) {
  let best = -1, bestD = 8 * 8;
  state.map.coords.forEach((c, i) => {
    const [a, b] = px(c), d = (a - u) ** 2 + (b - v) ** 2;
    if (d < bestD) { bestD = d; best = i; }
  });
  return best;
}

function classColour(id) {  // the map's colour of class id
  const i = (state.map.classes || []).indexOf(id);
  return i < 0 ? "#9aa1af" : PALETTE[i % PALETTE.length];
}

const className = (id) => (state.info.classes ? state.info.classes[id] : String(id));

function legend() {
  const box = $("legend"), classes = state.map.classes, selectable = state.info.classes !== null;
  if (!classes) { box.replaceChildren(el("span", {text: "no labels: points in one colour"})); return; }
  const shown = classes.slice(0, 30).map((c, i) => {
    const dot = el("i"); dot.style.background = PALETTE[i % PALETTE.length];
    const item = el("span", selectable ? {class: "pick", title: `decode as class ${className(c)}`} : {}, [dot, `label ${className(c)}`]);
    if (selectable) item.addEventListener("click", () => setClass(className(c)));
    return item;
  });
  box.replaceChildren(...shown);
}

function mapHint() {
  const info = state.info, p = info.projection, n = state.map.coords.length;
  let text = info.note ? `${info.note}. ` : `Posterior means E_q[z|x] of ${n} test examples${info.labelled ? ", coloured by label" : ""}. `;
  if (p.kind === "pca") {
    text += `The latent space has ${info.latent_dim} dimensions: this is the plane of the means' first two principal components ` +
      `(${Math.round(p.explained[0] * 100)}% and ${Math.round(p.explained[1] * 100)}% of their variance). ` +
      "A click is lifted back as z = mean + coordinates · components; the other directions stay at the data mean. ";
  }
  if (info.conditional) {
    text += `Each example is encoded given its own ${info.context.join(" and ")}: the class is the decoder's to know, so z need not carry it and the classes may overlap. `;
  } else if (info.classifier) {
    text += "Each example is encoded under the class the classifier q(y|x) predicts for it. ";
  }
  text += "Hover a point to see its input and reconstruction; click it to choose it, or click an empty spot to decode that point.";
  $("map-hint").textContent = text;
}

const hoverExample = latestOnly(async (i) => {
  const ex = await api(`/api/example/${i}`);
  show($("hover-input"), ex.input);
  show($("hover-rec"), ex.reconstruction);
  $("hover-text").textContent = `test example ${ex.index}` + (ex.label === null ? "" : ` · label ${className(ex.label)}`) +
    covariateText(ex.context, " · ") + (ex.predicted ? ` · classifier: ${predictedText(ex.predicted)}` : "");
});

function predictedText(p) {
  return `${p.class} (${(100 * p.probability).toFixed(p.probability > 0.999 || p.probability < 0.001 ? 1 : 0)}%)`;
}

function covariateText(context, sep) {  // the continuous variables of a context {name: value}
  if (!context) return "";
  const parts = state.info.covariates.map((name) => `${name} ${fmt(context[name], 3)}`);
  return parts.length ? sep + parts.join(", ") : "";
}

function onMapMove(event) {
  const r = $("map").getBoundingClientRect(), i = nearest(event.clientX - r.left, event.clientY - r.top);
  if (i !== state.hovered) {
    state.hovered = i;
    drawMap();
    if (i >= 0) hoverExample(i);
  }
}

async function onMapClick(event) {
  const r = $("map").getBoundingClientRect(), u = event.clientX - r.left, v = event.clientY - r.top;
  const i = nearest(u, v);
  try {
    if (i >= 0) await chooseExample(i);
    else {
      const out = await post("/api/decode", {point: unpx(u, v), ...ctx()});
      choose(out.z, out.image, `map point (${fmt(unpx(u, v)[0])}, ${fmt(unpx(u, v)[1])})`);
    }
  } catch (err) { toast(err.message); }
}

// ------------------------------------------------------------------- the chosen point, sliders
function choose(z, image, source) {
  state.z = z.slice();
  state.origin = z.slice();
  setCurrent(image, source);
  syncSliders();
  drawMap();
}

async function chooseExample(i, refresh = true) {
  const ex = await api(`/api/example/${i}`);
  // its reconstruction was decoded under its own context: the page takes that context over
  const changed = adopt(ex.context, i);
  choose(ex.z, ex.reconstruction, `reconstruction of test example ${i}` + (ex.label === null ? "" : ` (label ${className(ex.label)})`));
  if (changed && refresh) await refreshOthers();
}

function setCurrent(image, source) {
  const box = $("current");
  show(box, image);
  box.dataset.version = String(Number(box.dataset.version) + 1);
  if (source !== undefined) $("current-source").textContent = source;
  $("current-context").textContent = contextText("decoded");
}

const decodeZ = latestOnly(async (z) => {
  const out = await post("/api/decode", {z, ...ctx()});
  setCurrent(out.image);
});

// ------------------------------------------------------------- the context: class, covariates
// A conditional model (or M2) decodes under a context the page chooses: the class selector and,
// for continuous covariates the page cannot set, those of a test example.
function ctx() {
  const c = {};
  if (state.cls !== null) c.label = state.cls;
  if (state.contextOf !== null) c.context_of = state.contextOf;
  return c;
}

function ctxQuery(forUpload = false) {
  if (forUpload && !state.info.conditional) return "";  // M2 scores without a class
  return Object.entries(ctx()).map(([k, v]) => `&${k}=${encodeURIComponent(v)}`).join("");
}

function contextParts() {  // the chosen context in words: "class 3", "class 3, dose of test example 7"
  const parts = [];
  if (state.cls !== null) parts.push(`class ${state.cls}`);
  if (state.contextOf !== null) parts.push(`${state.info.covariates.join(", ")} of test example ${state.contextOf}`);
  return parts.join(", ");
}

const contextText = (verb) => (contextParts() ? `${verb} as ${contextParts()}` : "");

function setupContext() {
  const info = state.info;
  if (!info.context.length) return;
  $("context-bar").hidden = false;
  const hint = [];
  if (info.classes) {
    const select = $("class-select");
    select.replaceChildren(...info.classes.map((name) => el("option", {value: name, text: name})));
    state.cls = info.classes[0];
    $("class-field").hidden = false;
    select.addEventListener("change", () => setClass(select.value));
  }
  if (info.covariates.length) {
    state.contextOf = 0;
    $("context-of-name").textContent = `${info.covariates.join(", ")} of test example`;
    $("context-of").max = String(Math.max(0, state.map.coords.length - 1));
    $("context-field").hidden = false;
    $("context-of").addEventListener("change", () => {
      const n = state.map.coords.length, i = Math.round(Number($("context-of").value));
      if (!(i >= 0 && i < n)) { toast(`choose a test example from 0 to ${n - 1}`); showContext(); return; }
      state.contextOf = i; showContext(); refreshAll();
    });
  }
  if (info.classifier) {
    hint.push("This semi-supervised model (M2) needs no class to encode: its classifier q(y|x) predicts one, shown for " +
      "hovered points and uploads. Its decoder p(x|y, z) generates under the class chosen here: the chosen point, " +
      "the sliders, the samples and the interpolation. Choosing a test example or an upload selects its predicted class.");
  } else {
    if (info.classes) {
      hint.push("This model is conditional on the class: the chosen point, the sliders, the samples and the interpolation " +
        "are decoded under the class chosen here, and an upload is encoded and scored under it: log p(x|c). " +
        "Hovered test examples use their own label. Choosing a test example selects its class.");
    }
    if (info.covariates.length) {
      hint.push(`The page cannot set the continuous ${info.covariates.length > 1 ? "covariates" : "covariate"} ` +
        `${info.covariates.join(", ")}: decoding and scoring use the values of the test example given here ` +
        "(choosing a test example on the map takes its values).");
    }
  }
  $("context-hint").textContent = hint.join(" ");
  showContext();
}

function showContext() {  // the bar, the captions and the titles that name the context
  if (state.cls !== null) {
    $("class-select").value = state.cls;
    $("class-swatch").style.background = classColour(state.info.classes.indexOf(state.cls));
  }
  if (state.contextOf !== null) {
    $("context-of").value = String(state.contextOf);
    const c = state.map.contexts ? state.map.contexts[state.contextOf] : null;
    $("context-values").textContent = c ? covariateText(c, "").trim() : "";
  }
  $("current-context").textContent = contextText("decoded");
  if (state.info.context.length) {
    $("sample-title").textContent = `Samples from the prior, ${contextParts()}`;
    $("sample-hint").textContent = (state.info.classifier
      ? "Fresh z ~ p(z), the model's prior (the same for every class), decoded by p(x|y, z) (its mean) with y the class chosen above"
      : "Fresh z ~ p(z|c), the model's prior given the context chosen above, decoded (the decoder's mean) under that context") +
      "; changing it re-decodes the same draws. Click one to explore it.";
  }
}

function adopt(context, index) {  // take over a test example's (or an upload's) context; whether it changed
  if (!context) return false;
  let changed = false;
  if (state.cls !== null && context.label !== undefined && context.label !== state.cls) { state.cls = context.label; changed = true; }
  if (state.contextOf !== null && index !== null && index !== state.contextOf) { state.contextOf = index; changed = true; }
  showContext();
  return changed;
}

function setClass(name) {
  if (state.cls === null || name === state.cls) return;
  state.cls = name;
  showContext();
  refreshAll();
}

// everything decoded under the chosen context, decoded again (quick changes collapse into the last)
const refreshAll = latestOnly(async () => {
  if (state.z) {
    const out = await post("/api/decode", {z: state.z.slice(), ...ctx()});
    setCurrent(out.image);
  }
  await refreshOthers();
});

async function refreshOthers() {  // the samples, the interpolation and a conditional model's upload score
  await sample(false);
  await interpolate();
  if (state.file && state.info.conditional) await upload(state.file, true);
}

function buildSliders() {
  const box = $("sliders"), dims = state.info.dims;
  if (state.info.dims_by === "activity") {
    $("dims-hint").textContent = "One slider per latent dimension, ordered by activity Var_x(E_q[z_d|x]) over the test set: " +
      `a per-dimension KL is not defined for this ${state.info.posterior} posterior and ${state.info.prior} prior. ` +
      "Dimensions with activity < 0.01 are marked inactive: the model ignores them.";
  }
  const size = (d) => (d.kl !== null ? d.kl : d.activity || 0);  // what the bar shows
  const maxKl = Math.max(1e-9, ...dims.map(size));
  const rows = [];
  for (const d of dims) {
    const inactive = d.active === false;
    const name = el("span", {class: "name" + (inactive ? " inactive" : ""), text: dimName(d.dim)});
    const bar = el("span", {class: "bar"}); bar.style.width = `${Math.max(2, 46 * size(d) / maxKl)}px`;
    const kl = el("span", {class: "kl" + (inactive ? " inactive" : ""), title: `activity Var(E_q[z]) = ${fmt(d.activity, 3)}`},
      d.kl !== null ? [bar, `KL ${fmt(d.kl)}`] : d.activity !== null ? [bar, `activity ${fmt(d.activity)}`] : ["–"]);
    if (inactive) kl.append(el("span", {class: "badge", text: "inactive"}));
    const input = el("input", {type: "range", min: "-4", max: "4", step: "0.01", value: "0",
      "data-dim": String(d.dim), "aria-label": `latent dimension ${d.dim + 1}`, class: inactive ? "inactive" : ""});
    const out = el("output", {text: "0.00"});
    input.addEventListener("input", () => {
      if (!state.z) state.z = new Array(state.info.latent_dim).fill(0);
      state.z[d.dim] = Number(input.value);
      out.textContent = fmt(input.value);
      $("current-source").textContent = "the chosen point, moved with the sliders";
      drawMap();
      decodeZ(state.z.slice());
    });
    rows.push(name, kl, input, out);
  }
  box.replaceChildren(...rows);
}

function syncSliders() {
  for (const input of $("sliders").querySelectorAll("input[type=range]")) {
    const v = state.z[Number(input.dataset.dim)];
    input.min = String(Math.min(-4, Math.floor(v))); input.max = String(Math.max(4, Math.ceil(v)));
    input.value = String(v);
    input.nextElementSibling.textContent = fmt(v);
  }
}

// ---------------------------------------------------------------------------- interpolation
function endText(end) {
  return end.index !== undefined ? `test example ${end.index}` : "a chosen point";
}

async function interpolate() {
  const steps = Number($("steps").value), method = $("method").value;
  try {
    const out = await post("/api/interpolate", {from: state.ends.a, to: state.ends.b, steps, method, ...ctx()});
    const strip = $("interp-strip");
    strip.replaceChildren(...out.images.map((im, i) => {
      const box = el("div", {class: "x-small", title: `step ${i + 1} of ${steps}: click to explore`});
      box.addEventListener("click", () => choose(out.z[i], im, `step ${i + 1} of the ${method} path`));
      return box;
    }));
    out.images.forEach((im, i) => show(strip.children[i], im));
    state.path = {coords: out.coords};
    drawMap();
  } catch (err) { toast(err.message); }
}

function setEnd(which, end) {
  state.ends[which] = end;
  $(`end-${which}-text`).textContent = endText(end);
  interpolate();
}

// ------------------------------------------------------------------------------------ samples
async function sample(fresh = true) {
  if (fresh) state.sampleSeed = Math.floor(Math.random() * 2 ** 31);
  try {
    const out = await api(`/api/sample?n=16&seed=${state.sampleSeed}${ctxQuery()}`);
    const grid = $("samples");
    grid.replaceChildren(...out.images.map((im, i) => {
      const box = el("div", {class: "x-small", title: "click to explore this sample"});
      box.addEventListener("click", () => choose(out.z[i], im, "a sample from the prior"));
      return box;
    }));
    out.images.forEach((im, i) => show(grid.children[i], im));
    grid.dataset.version = String(Number(grid.dataset.version) + 1);
  } catch (err) { toast(err.message); }
}

// ----------------------------------------------------------------------------- your own input
async function upload(file, rescore = false) {
  const error = $("upload-error");
  error.hidden = true;
  state.file = file;
  if (file.size > MAX_UPLOAD) {
    error.textContent = `'${file.name}' is ${(file.size / 1048576).toFixed(1)} MB; the limit is 5 MB.`;
    error.hidden = false;
    return;
  }
  $("drop-text").textContent = `scoring '${file.name}'…`;
  try {
    const out = await api(`/api/upload?name=${encodeURIComponent(file.name)}${ctxQuery(true)}`,
      {method: "POST", headers: {"Content-Type": "application/octet-stream"}, body: file});
    await showUpload(out, rescore);
  } catch (err) {
    state.file = null;
    error.textContent = err.message;
    error.hidden = false;
  } finally {
    $("drop-text").textContent = "Drop an image (PNG, JPEG) or a .npy row here, or click to choose a file.";
  }
}

async function showUpload(out, rescore) {
  $("upload-result").hidden = false;
  show($("up-input"), out.input);
  show($("up-rec"), out.reconstruction);
  const lp = out.conditional ? "log p(x|c)" : "log p(x)";
  const q = out.conditional ? "q(z|x, c)" : out.predicted ? "q(z|x, y)" : "q(z|x)";
  const given = out.context ? Object.entries(out.context).map(([k, v]) => k === "label" ? `class ${v}` : `${k} ${fmt(v, 3)}`).join(", ") : "";
  $("up-logpx-name").textContent = lp;
  $("up-posterior-title").textContent = `Posterior ${q}: mean ± one standard deviation`;
  $("up-class-row").hidden = !(out.conditional || out.predicted);
  if (out.predicted) {
    $("up-class-name").textContent = "classifier q(y|x)";
    $("up-class").textContent = predictedText(out.predicted);
  } else if (out.conditional) {
    $("up-class-name").textContent = "scored under";
    $("up-class").textContent = given + " (chosen above)";
  }
  $("up-logpx").textContent = `${fmt(out.log_px)} ± ${fmt(out.log_px_se)} nats`;
  const elboSe = out.elbo_se === null ? "" : ` ± ${fmt(out.elbo_se)}`;
  $("up-elbo").textContent = `${fmt(out.elbo)}${elboSe} nats  (reconstruction ${fmt(out.reconstruction_term)}, KL ${fmt(out.kl)})`;
  const khat = out.khat === null || out.khat === undefined ? ""
    : `; Pareto k-hat ${fmt(out.khat, 2)}${out.khat > 0.7 ? " (above 0.7: unreliable, log p(x) may be too low)" : ""}`;
  $("up-ess").textContent = `${fmt(out.ess, 0)} of ${out.log_px_k} samples${khat}`;
  let explain = "";
  if (out.conditional) {
    explain += `This model is conditional: the upload is encoded by ${q} and scored under c = ${given}, the context chosen ` +
      "above; choose another class to score it under that one. ";
  } else if (out.predicted) {
    explain += `This model's classifier q(y|x) gives class ${predictedText(out.predicted)}; the posterior ${q} and the ` +
      "reconstruction use y = that class, while log p(x) and the ELBO sum over all classes. ";
  }
  explain += `${lp} is estimated by importance sampling with K = ${out.log_px_k} draws from ${out.predicted ? "q(y|x) q(z|x, y)" : q}. ` +
    `± is one standard error of that estimate, from the spread of ${out.log_px_groups} independent groups of ` +
    `${out.log_px_k / out.log_px_groups} draws; a finite K biases it low, so the true value is likely a little higher. ` +
    `The ELBO uses ${out.elbo_k} draws for the reconstruction term${out.elbo_se === null ? "" : " (± its standard error)"}; ` +
    `it is a lower bound on ${lp}. A low effective sample size means the estimate rests on few draws.`;
  if (out.likelihood === "bernoulli" && !out.binary) {
    explain += ` With a Bernoulli likelihood and grey values, ${lp} is a cross-entropy score rather than a normalised density.`;
  }
  $("up-explain").textContent = explain;
  $("up-notes").replaceChildren(...out.notes.map((n) => el("li", {text: n})));
  drawPosterior(out.z, out.std);
  state.upload = out.coords;
  if (rescore) { drawMap(); return; }  // a new class: only the score changes, the chosen point stays
  const changed = out.predicted ? adopt({label: out.predicted.class}, null) : false;
  choose(out.z, out.reconstruction, `reconstruction of '${out.name}'`);
  if (changed) await refreshOthers();
}

function drawPosterior(mean, std) {
  const c = $("up-posterior"), dims = state.info.dims, dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth || 400, row = 16, h = dims.length * row + 24;
  c.style.height = `${h}px`; c.width = w * dpr; c.height = h * dpr;
  const g = c.getContext("2d");
  g.scale(dpr, dpr);
  const left = 44, right = w - 10, span = 4, x = (v) => left + ((Math.max(-span, Math.min(span, v)) + span) / (2 * span)) * (right - left);
  g.font = "11px system-ui, sans-serif"; g.fillStyle = "#8a93a3"; g.textAlign = "center";
  for (let t = -span; t <= span; t += 2) {
    g.strokeStyle = t === 0 ? "#cfd3dc" : "#eceef3";
    g.beginPath(); g.moveTo(x(t), 4); g.lineTo(x(t), h - 18); g.stroke();
    g.fillText(String(t), x(t), h - 4);
  }
  dims.forEach((d, r) => {
    const y = 10 + r * row, m = mean[d.dim], s = std[d.dim];
    g.fillStyle = d.active === false ? "#9aa1af" : "#1d2433"; g.textAlign = "right";
    g.fillText(dimName(d.dim), left - 8, y + 4);
    g.strokeStyle = "#4f46e5"; g.lineWidth = 2;
    g.beginPath(); g.moveTo(x(m - s), y); g.lineTo(x(m + s), y); g.stroke();
    g.fillStyle = "#4f46e5"; g.beginPath(); g.arc(x(m), y, 3.5, 0, 7); g.fill();
  });
  c.title = dims.map((d) => `${dimName(d.dim)}: mean ${fmt(mean[d.dim], 3)}, sd ${fmt(std[d.dim], 3)}`).join("\n");
}

function setupUpload() {
  const drop = $("drop"), input = $("file");
  input.addEventListener("change", () => { if (input.files.length) upload(input.files[0]); input.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
}

// ------------------------------------------------------------------------------------- start
async function start() {
  try {
    [state.info, state.map] = await Promise.all([api("/api/info"), api("/api/map")]);
  } catch (err) {
    $("summary").textContent = `could not load the model: ${err.message}`;
    return;
  }
  if (state.info.x_kind === "vector") document.body.classList.add("vector");
  summary(state.info);
  setupContext();
  mapHint();
  legend();
  buildSliders();
  setupMap();
  setupUpload();
  const map = $("map");
  map.addEventListener("mousemove", onMapMove);
  map.addEventListener("click", onMapClick);
  window.addEventListener("resize", () => { if ($("map").clientWidth !== mapView.size) setupMap(); });
  $("reset-dims").addEventListener("click", () => {
    if (!state.origin) return;
    state.z = state.origin.slice(); syncSliders(); drawMap(); decodeZ(state.z.slice());
    $("current-source").textContent = "the chosen point";
  });
  $("sample-btn").addEventListener("click", sample);
  $("interp-btn").addEventListener("click", interpolate);
  for (const w of ["a", "b"]) {
    $(`set-${w}`).addEventListener("click", () => { if (state.z) setEnd(w, {z: state.z.slice()}); });
    $(`idx-${w}`).addEventListener("change", () => setEnd(w, {index: Number($(`idx-${w}`).value)}));
  }
  const n = state.map.coords.length;
  if (n > 0) {
    $("idx-a").max = $("idx-b").max = String(n - 1);
    await chooseExample(0, false).catch((err) => toast(err.message));
    if (n > 1) await interpolate();
    else { state.ends = {a: {index: 0}, b: {z: new Array(state.info.latent_dim).fill(0)}}; $("end-b-text").textContent = endText(state.ends.b); }
  } else {
    const zero = new Array(state.info.latent_dim).fill(0);
    const out = await post("/api/decode", {z: zero, ...ctx()}).catch((err) => toast(err.message));
    if (out) choose(out.z, out.image, "the prior's mean z = 0");
    state.ends = {a: {z: zero}, b: {z: zero.map((_, i) => (i === 0 ? 2 : 0))}};
    $("end-a-text").textContent = $("end-b-text").textContent = "a chosen point";
  }
  await sample();
  document.body.dataset.ready = "1";
}

start();
