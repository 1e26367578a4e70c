// The `mert serve` page: plain JavaScript, no dependencies, everything from this server.
"use strict";

const SHOWN_TRACKS = 500; // rows the list renders at once; the filter narrows the rest
const NEIGHBOURS = 10;
// Split colours: none close to the selection (indigo) or the neighbours (orange).
const PALETTE = ["#0e9f6e", "#d6336c", "#0891b2", "#64748b", "#8d5b3c", "#65a30d", "#be123c", "#0f766e"];
const SELECTED = "#4f46e5";
const NEAR = "#e8890c";
const NO_SPLIT = "#9aa1b1";

const state = {
  info: null,
  tracks: [],
  layer: null,
  map: null, // {layer, explained, points}
  selection: null, // {kind: "track" | "upload", id, name, position?}
  neighbours: [],
  splitColour: new Map(),
};

const $ = (id) => document.getElementById(id);

async function api(path, options) {
  const response = await fetch(path, options);
  const payload = await response.json();
  if (!response.ok) throw new Error(payload.error || `${response.status} ${response.statusText}`);
  return payload;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function colourOf(split) {
  return split === null || split === undefined ? NO_SPLIT : state.splitColour.get(split) || NO_SPLIT;
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const whole = Math.round(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

// ------------------------------------------------------------------ start

async function start() {
  const [info, listing] = await Promise.all([api("/api/info"), api("/api/tracks")]);
  state.info = info;
  state.tracks = listing.tracks;
  state.layer = info.default_layer;
  info.splits.forEach((split, i) => state.splitColour.set(split, PALETTE[i % PALETTE.length]));

  $("store-meta").textContent = `${info.model} · ${info.tracks} tracks · ${info.pooling} pooled`;
  $("store-meta").title = info.store;
  for (const layer of info.layers) {
    const option = element("option", "", String(layer));
    option.value = String(layer);
    if (layer === info.default_layer) option.selected = true;
    $("layer").append(option);
  }
  for (const split of info.splits) {
    const option = element("option", "", split);
    option.value = split;
    $("split").append(option);
  }
  renderLegend();
  renderTracks();
  renderProbe(null);
  await loadMap();
  document.body.dataset.ready = "1";
}

// ------------------------------------------------------------------ catalog list

function renderTracks() {
  const query = $("filter").value.trim().toLowerCase();
  const split = $("split").value;
  const matches = state.tracks.filter(
    (t) => (!query || t.path.toLowerCase().includes(query)) && (!split || t.split === split),
  );
  const list = $("tracks");
  list.replaceChildren();
  for (const track of matches.slice(0, SHOWN_TRACKS)) {
    const row = element("li");
    row.dataset.id = String(track.id);
    row.title = track.path;
    const swatch = element("span", "swatch");
    swatch.style.background = colourOf(track.split);
    row.append(swatch, element("span", "name", track.name));
    if (track.duration) row.append(element("span", "chip", formatDuration(track.duration)));
    if (isSelected("track", track.id)) row.classList.add("active");
    row.addEventListener("click", () => selectTrack(track.id));
    list.append(row);
  }
  const shown = Math.min(matches.length, SHOWN_TRACKS);
  $("count").textContent = matches.length > shown
    ? `showing ${shown} of ${matches.length} matching tracks: refine the filter`
    : `${matches.length} of ${state.tracks.length} tracks`;
}

function isSelected(kind, id) {
  return state.selection !== null && state.selection.kind === kind && state.selection.id === id;
}

// ------------------------------------------------------------------ selection

async function selectTrack(id) {
  const track = state.tracks[id];
  state.selection = { kind: "track", id, name: track.name };
  showSelection("Track", track.name, track.path);
  setPlayer(`/audio/${id}`);
  renderTracks();
  await Promise.all([loadNeighbours(), loadPredictions()]);
}

async function selectUpload(file) {
  const status = $("drop-status");
  status.classList.remove("error");
  if (file.size > state.info.max_upload_bytes) {
    status.textContent = `${file.name} is larger than the ${Math.round(state.info.max_upload_bytes / 2 ** 20)} MB this server accepts (--max-upload-mb)`;
    status.classList.add("error");
    return;
  }
  status.textContent = `embedding ${file.name} with ${state.info.query_model}…`;
  try {
    const upload = await api("/api/upload", {
      method: "POST",
      headers: { "X-File-Name": encodeURIComponent(file.name), "Content-Type": "application/octet-stream" },
      body: file,
    });
    status.textContent = "";
    state.selection = { kind: "upload", id: upload.upload, name: upload.name };
    showSelection("Your file", upload.name, "dropped here; embedded like the catalog's tracks");
    setPlayer(URL.createObjectURL(file));
    renderTracks();
    await Promise.all([loadNeighbours(), loadPredictions()]);
  } catch (error) {
    status.textContent = error.message;
    status.classList.add("error");
  }
}

function selectionKey(selection) {
  return `${selection.kind}-${selection.id}`;
}

function showSelection(kind, name, path) {
  $("empty").hidden = true;
  $("selection").hidden = false;
  $("selection").dataset.key = selectionKey(state.selection);
  $("sel-kind").textContent = kind;
  $("sel-name").textContent = name;
  $("sel-path").textContent = path;
}

function setPlayer(source) {
  const player = $("player");
  $("player-error").hidden = true;
  if (player.src.startsWith("blob:")) URL.revokeObjectURL(player.src);
  player.src = source;
}

async function explainAudioError(audio, target) {
  // The media element only says "error"; ask the server why (it answers JSON on failure).
  if (!audio.src || audio.src.startsWith("blob:")) return;
  try {
    const response = await fetch(audio.src, { headers: { Range: "bytes=0-0" } });
    if (!response.ok) target.textContent = (await response.json()).error;
    else target.textContent = "the browser cannot play this audio format";
  } catch (error) {
    target.textContent = error.message;
  }
  target.hidden = false;
}

function selectionQuery() {
  const s = state.selection;
  return s.kind === "track" ? `track=${s.id}` : `upload=${encodeURIComponent(s.id)}`;
}

// ------------------------------------------------------------------ neighbours

async function loadNeighbours() {
  if (!state.selection) return;
  const asked = state.selection;
  const result = await api(`/api/neighbours?${selectionQuery()}&layer=${state.layer}&k=${NEIGHBOURS}`);
  if (asked !== state.selection) return; // a newer selection won
  state.neighbours = result.neighbours;
  state.selection.position = result.position;
  $("nn-layer").textContent = `layer ${result.layer} · cosine`;
  const list = $("neighbours");
  list.replaceChildren();
  const scores = result.neighbours.map((hit) => hit.score);
  const range = { low: Math.min(...scores), high: Math.max(...scores) };
  for (const hit of result.neighbours) list.append(neighbourRow(hit, range));
  if (!result.neighbours.length) list.append(element("li", "muted", "no other tracks in the store"));
  list.dataset.key = `${selectionKey(asked)}@${result.layer}`; // what the list shows (the browser test waits on it)
  drawMap();
}

// The bar ranks a hit within this list (cosine scores of one catalog often sit close
// together); the number beside it is the cosine similarity itself.
function neighbourRow(hit, range) {
  const row = element("li", "neighbour");
  row.dataset.id = String(hit.id);
  const who = element("div", "who");
  const name = element("a", "name", hit.name);
  name.title = hit.path;
  name.addEventListener("click", () => selectTrack(hit.id));
  who.append(name, element("span", "sub", [hit.split, formatDuration(hit.duration)].filter(Boolean).join(" · ") || hit.path));
  const score = element("div", "score");
  const bar = element("div", "bar");
  bar.title = "length: place within this list; number: cosine similarity";
  const fill = element("span");
  const spread = range.high - range.low;
  fill.style.width = `${spread > 0 ? 15 + 85 * (hit.score - range.low) / spread : 100}%`;
  bar.append(fill);
  score.append(bar, element("span", "value", hit.score.toFixed(3)));
  const play = element("button", "play", "▶");
  play.title = `play ${hit.name}`;
  play.addEventListener("click", () => togglePreview(hit.id, play));
  row.append(element("span", "rank", String(hit.rank)), who, score, play);
  return row;
}

function togglePreview(id, button) {
  const preview = $("preview");
  const source = `/audio/${id}`;
  const playing = button.classList.contains("playing");
  document.querySelectorAll(".play.playing").forEach((b) => { b.classList.remove("playing"); b.textContent = "▶"; });
  if (playing) { preview.pause(); return; }
  $("player").pause();
  if (!preview.src.endsWith(source)) preview.src = source;
  button.classList.add("playing");
  button.textContent = "❚❚";
  preview.play().catch(() => explainAudioError(preview, $("player-error")));
}

// ------------------------------------------------------------------ probe

async function loadPredictions() {
  if (!state.info.probe || !state.selection) return;
  const asked = state.selection;
  try {
    const result = await api(`/api/predict?${selectionQuery()}`);
    if (asked === state.selection) {
      renderProbe(result);
      $("probe-body").dataset.key = selectionKey(asked);
    }
  } catch (error) {
    $("probe-body").replaceChildren(element("p", "notice", error.message));
  }
}

function renderProbe(result) {
  const probe = state.info.probe;
  const body = $("probe-body");
  body.replaceChildren();
  if (!probe) {
    $("probe-caption").textContent = "";
    body.append(element("p", "hint", "No probe loaded. Start with --probe DIR (a `mert probe` output folder) to see its predictions here."));
    return;
  }
  const score = probe.test_score === null || probe.test_score === undefined ? "" : ` · test ${probe.metric} ${(100 * probe.test_score).toFixed(1)}`;
  $("probe-caption").textContent = `${probe.task} · ${probe.kind} · ${probe.layer}${score}`;
  if (!result) {
    body.append(element("p", "hint", "Select a track to see what the probe predicts for it."));
    return;
  }
  const outputs = result.outputs;
  if (probe.kind === "regression") {
    for (const row of outputs) body.append(probeRow(row.label, null, row.value.toFixed(3), false));
    return;
  }
  const top = element("p", "probe-top");
  top.append(probe.kind === "multiclass" ? "Predicted: " : "Most likely tag: ", element("strong", "", outputs[0].label));
  body.append(top);
  outputs.slice(0, 12).forEach((row, i) => body.append(probeRow(row.label, row.value, `${(100 * row.value).toFixed(1)}%`, i === 0)));
}

function probeRow(label, fraction, text, isTop) {
  const row = element("div", isTop ? "probe-row top" : "probe-row");
  const bar = element("div", "bar");
  if (fraction !== null) {
    const fill = element("span");
    fill.style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
    bar.append(fill);
  }
  row.append(element("span", "label", label), bar, element("span", "value", text));
  return row;
}

// ------------------------------------------------------------------ map

async function loadMap() {
  const layer = state.layer;
  const map = await api(`/api/map?layer=${layer}`);
  if (layer !== state.layer) return;
  state.map = map;
  const [a, b] = map.explained.map((x) => (100 * x).toFixed(0));
  $("map-caption").textContent = `PCA of layer ${map.layer} · ${a}% + ${b}% of variance`;
  drawMap();
}

function renderLegend() {
  const legend = $("legend");
  legend.replaceChildren();
  const item = (colour, text) => {
    const span = element("span");
    const swatch = element("span", "swatch");
    swatch.style.background = colour;
    span.append(swatch, text);
    legend.append(span);
  };
  for (const [split, colour] of state.splitColour) item(colour, split);
  if (state.tracks.some((t) => t.split === null)) item(NO_SPLIT, "no split");
  item(SELECTED, "selected");
  item(NEAR, "neighbours");
}

// Screen geometry of the current map: data -> CSS pixels inside the canvas.
function mapGeometry() {
  const canvas = $("map");
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  const points = state.map ? state.map.points : [];
  const extra = state.selection && state.selection.kind === "upload" && state.selection.position ? [state.selection.position] : [];
  let [minX, maxX, minY, maxY] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const [x, y] of points.concat(extra)) {
    minX = Math.min(minX, x); maxX = Math.max(maxX, x);
    minY = Math.min(minY, y); maxY = Math.max(maxY, y);
  }
  if (!isFinite(minX)) [minX, maxX, minY, maxY] = [-1, 1, -1, 1];
  const pad = 18;
  const spanX = maxX - minX || 1;
  const spanY = maxY - minY || 1;
  const scale = Math.min((width - 2 * pad) / spanX, (height - 2 * pad) / spanY);
  const offsetX = (width - scale * spanX) / 2;
  const offsetY = (height - scale * spanY) / 2;
  return {
    width, height,
    toScreen: ([x, y]) => [offsetX + (x - minX) * scale, height - (offsetY + (y - minY) * scale)],
  };
}

function drawMap() {
  const canvas = $("map");
  const ratio = window.devicePixelRatio || 1;
  const geometry = mapGeometry();
  canvas.width = Math.round(geometry.width * ratio);
  canvas.height = Math.round(geometry.height * ratio);
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, geometry.width, geometry.height);
  $("tooltip").hidden = true; // points may have moved under the pointer
  if (!state.map) return;
  const points = state.map.points;
  const radius = points.length > 2000 ? 2 : points.length > 300 ? 3 : 5;
  context.globalAlpha = 0.75;
  points.forEach((point, id) => {
    const [x, y] = geometry.toScreen(point);
    context.fillStyle = colourOf(state.tracks[id].split);
    context.beginPath();
    context.arc(x, y, radius, 0, 2 * Math.PI);
    context.fill();
  });
  context.globalAlpha = 1;
  const origin = selectedPoint();
  if (origin) {
    const [ox, oy] = geometry.toScreen(origin);
    context.strokeStyle = "rgba(232, 137, 12, 0.45)";
    context.lineWidth = 1.2;
    for (const hit of state.neighbours) {
      const [x, y] = geometry.toScreen(points[hit.id]);
      context.beginPath(); context.moveTo(ox, oy); context.lineTo(x, y); context.stroke();
    }
    for (const hit of state.neighbours) {
      const [x, y] = geometry.toScreen(points[hit.id]);
      ring(context, x, y, radius + 2, NEAR, "#ffffff");
    }
    ring(context, ox, oy, radius + 4, SELECTED, "#ffffff", 3);
  }
}

function ring(context, x, y, radius, fill, stroke, width = 2) {
  context.beginPath();
  context.arc(x, y, radius, 0, 2 * Math.PI);
  context.fillStyle = fill;
  context.fill();
  context.lineWidth = width;
  context.strokeStyle = stroke;
  context.stroke();
}

function selectedPoint() {
  const s = state.selection;
  if (!s || !state.map) return null;
  return s.kind === "track" ? state.map.points[s.id] : s.position || null;
}

function pointAt(clientX, clientY) {
  if (!state.map) return null;
  const rect = $("map").getBoundingClientRect();
  const geometry = mapGeometry();
  let best = null;
  let bestDistance = 12 * 12; // pixels², the click tolerance
  state.map.points.forEach((point, id) => {
    const [x, y] = geometry.toScreen(point);
    const d = (x - (clientX - rect.left)) ** 2 + (y - (clientY - rect.top)) ** 2;
    if (d < bestDistance) { best = id; bestDistance = d; }
  });
  return best;
}

// Where track `id` is drawn, in page (client) coordinates; the browser test clicks there.
function pointPosition(id) {
  const rect = $("map").getBoundingClientRect();
  const [x, y] = mapGeometry().toScreen(state.map.points[id]);
  return { x: rect.left + x, y: rect.top + y };
}

// ------------------------------------------------------------------ events

function wire() {
  $("filter").addEventListener("input", renderTracks);
  $("split").addEventListener("change", renderTracks);
  $("layer").addEventListener("change", async (event) => {
    state.layer = Number(event.target.value);
    await Promise.all([loadMap(), loadNeighbours()]);
  });
  const map = $("map");
  map.addEventListener("click", (event) => {
    const id = pointAt(event.clientX, event.clientY);
    if (id !== null) selectTrack(id);
  });
  map.addEventListener("mousemove", (event) => {
    const id = pointAt(event.clientX, event.clientY);
    const tooltip = $("tooltip");
    if (id === null) { tooltip.hidden = true; return; }
    const rect = map.getBoundingClientRect();
    tooltip.textContent = state.tracks[id].name;
    tooltip.hidden = false;
    const x = event.clientX - rect.left;
    const flip = x + tooltip.offsetWidth + 16 > rect.width; // keep it inside the map
    tooltip.classList.toggle("left", flip);
    tooltip.style.left = `${x}px`;
    tooltip.style.top = `${event.clientY - rect.top}px`;
  });
  map.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  window.addEventListener("resize", drawMap);

  const drop = $("drop");
  drop.addEventListener("click", (event) => { if (event.target === drop) $("file").click(); });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("file").click(); });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) selectUpload(file);
  });
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) selectUpload(file);
    event.target.value = "";
  });
  $("player").addEventListener("error", () => explainAudioError($("player"), $("player-error")));
  $("preview").addEventListener("ended", () => {
    document.querySelectorAll(".play.playing").forEach((b) => { b.classList.remove("playing"); b.textContent = "▶"; });
  });
}

window.mertkit = { state, pointPosition, selectTrack };
document.addEventListener("DOMContentLoaded", () => {
  wire();
  start().catch((error) => {
    $("store-meta").textContent = `cannot load the catalog: ${error.message}`;
    $("store-meta").classList.add("notice");
  });
});
