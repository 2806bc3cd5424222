// Bouncer's review page: a queue of candidates to relabel or confirm, an image page, the evaluation
// and the models, all over the service's own HTTP API. No build step, no dependencies: plain modules.

const API = new URL("../", location.href); // the page lives at <service>/ui/
const TOKEN_KEY = "bouncer-token";
const COUNTER_KEY = "bouncer-counter";
const IMPORTED_KEY = "bouncer-imported"; // what the Drift page last imported: the "imported" queue
const PAGE = 120; // queue items fetched per request
const THUMB = 156; // thumbnail size in CSS pixels (the server resizes)
const ROW = 222; // card height + gap, see style.css
const CELL = 180; // card width + gap

// ---------------------------------------------------------------- the API
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(path, { method = "POST", body, write = false, form } = {}) {
  const headers = {};
  const token = localStorage.getItem(TOKEN_KEY);
  if (write && token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(new URL(path, API), {
      method,
      headers,
      body: form ?? (body === undefined ? undefined : JSON.stringify(body)),
    });
  } catch (error) {
    throw new ApiError(0, `network error: ${error.message} (is the server running?)`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) {
    const message = (data && data.error) || text || response.statusText;
    if (response.status === 401) askForToken(message);
    throw new ApiError(response.status, message);
  }
  // a paged list's whole length, when the endpoint says it (suspects, images)
  const total = response.headers.get("x-total-count");
  if (Array.isArray(data) && total !== null) Object.defineProperty(data, "total", { value: Number(total) });
  return data;
}

const api = (endpoint, body = {}) => call(endpoint, { body });
const write = (endpoint, body = {}) => call(endpoint, { body, write: true });
// as many pixels as the screen shows (2x on a high-density screen), no more: smaller, faster to make and load
const pixels = (size) => Math.round(size * Math.min(2, Math.max(1, devicePixelRatio)));
const thumbnail = (id, size = THUMB) => new URL(`ui/thumbnail/${encodeURIComponent(id)}?size=${pixels(size)}`, API);
const original = (id) => new URL(`ui/image/${encodeURIComponent(id)}`, API);

// ---------------------------------------------------------------- small helpers
const $ = (selector, root = document) => root.querySelector(selector);
const esc = (text) =>
  String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const percent = (x) => (x === null || x === undefined ? "–" : `${Math.round(100 * x)}%`);
const el = (html) => {
  const template = document.createElement("template");
  template.innerHTML = html.trim();
  return template.content.firstElementChild;
};

function say(text, { kind = "info", action, seconds = 8 } = {}) {
  const box = el(`<div class="message ${kind}"><span>${esc(text)}</span></div>`);
  if (action) {
    const button = el(`<button type="button">${esc(action.label)}</button>`);
    button.addEventListener("click", () => {
      box.remove();
      action.run();
    });
    box.append(button);
  }
  $("#messages").append(box);
  setTimeout(() => box.remove(), seconds * 1000);
}

const fail = (error) => say(error.message || String(error), { kind: "error", seconds: 12 });

// ---------------------------------------------------------------- session state
const counter = JSON.parse(sessionStorage.getItem(COUNTER_KEY) || '{"decisions":0,"changed":0}');
function count(decisions, changed) {
  counter.decisions += decisions;
  counter.changed += changed;
  sessionStorage.setItem(COUNTER_KEY, JSON.stringify(counter));
  $("#counter").textContent = `${counter.decisions} decisions · ${counter.changed} labels changed`;
}

const info = { classes: [], splits: ["train", "test"], token_required: false, serving: "" };
let infoReady = Promise.resolve(); // the first refreshInfo: the review queue does not wait for it, other pages do
async function refreshInfo() {
  Object.assign(info, await call("ui/info", { method: "GET" }));
  $("#serving").textContent = info.serving ? `serving ${info.serving}` : "";
}

function askForToken(reason) {
  const dialog = $("#token-dialog");
  if (reason) say(reason, { kind: "error" });
  $("#token-input").value = localStorage.getItem(TOKEN_KEY) || "";
  if (!dialog.open) dialog.showModal();
}

function showTokenState() {
  const has = Boolean(localStorage.getItem(TOKEN_KEY));
  $("#token-button").classList.toggle("has-token", has);
  $("#token-button").textContent = has ? "Token ✓" : info.token_required ? "Token needed" : "Token";
}

// ---------------------------------------------------------------- the review queue
// "label → suggestion", the arrow only when the suggestion is another class (it is often the label itself).
const suggestion = (item) =>
  item.suggested_label && item.suggested_label !== item.label ? ` <span class="arrow">→ ${esc(item.suggested_label)}</span>` : "";

// Where candidates come from; each fetches one page (offset, limit) and says whether there are more.
const SOURCES = {
  suspects: {
    title: "Suspects: most likely wrong labels first, by the out-of-fold models and the labels of each image's nearest neighbours (hover a caption for the evidence)",
    fetch: async (offset, limit) => api("suspects", { k: limit, offset }),
    // the evidence: score, then the share of its nearest train neighbours and of its nearest test images labelled as it is
    caption: (s) =>
      `<span title="${esc(s.reasons.join("\n"))}"><span class="label">${esc(s.label)}</span>${suggestion(s)}<br>` +
      `${fmt(s.score, 2)}${s.flagged ? " ⚑" : ""} · nn ${percent(s.neighbour_agreement)} · test ${percent(s.test_neighbour_agreement)}</span>`,
  },
  trace: {
    title: "Traced: training images that pull misclassified test images to the wrong class",
    fetch: async (offset, limit, params) => api("trace", { k: params.k, limit, offset }),
    caption: (t) => `<span class="label">${esc(t.label)}</span>${suggestion(t)}<br>${t.votes} vote${t.votes === 1 ? "" : "s"}`,
  },
  expand: {
    title: "Expand: the unreviewed images nearest to what you confirmed as mislabelled",
    fetch: async (offset, limit, params) =>
      offset > 0 || !params.seeds.length
        ? []
        : api("expand", { image_ids: params.seeds, k: params.k, label: params.label || null, split: params.split }),
    caption: (n) => `<span class="label">${esc(n.label)}</span><br>distance ${fmt(n.distance, 2)}`,
  },
  similar: {
    title: "Similar: the nearest images to one image",
    fetch: async (offset, limit, params) =>
      offset > 0 || !params.image_id
        ? []
        : (await api("similar", { image_id: params.image_id, k: params.k, split: params.split, label: params.label || null })).results,
    caption: (n) => `<span class="label">${esc(n.label)}</span><br>distance ${fmt(n.distance, 2)}`,
  },
  imported: {
    title: "Imported: logged out-of-distribution predictions, now in the dataset, to label (see Drift)",
    fetch: async (offset) => (offset > 0 ? [] : JSON.parse(sessionStorage.getItem(IMPORTED_KEY) || "[]")),
    caption: (i) => `<span class="label">${esc(i.label)}</span> <span class="muted">predicted</span><br>ood ${fmt(i.ood_score, 3)}`,
  },
  images: {
    title: "All images, by path",
    fetch: async (offset, limit, params) => api("images", { split: params.split, label: params.label || null, limit, offset }),
    caption: (r) => `<span class="label">${esc(r.label)}</span><br><span class="muted">${esc(r.split)}</span>`,
  },
};

const PAGED = ["suspects", "trace", "images"]; // sources that page through a long list (offset, limit)

const queue = {
  source: "suspects",
  params: { k: 5, split: "train", label: "", image_id: "", seeds: [] },
  base: 0, // the position of items[0] in the whole queue: "from #" jumps deep without loading what lies before
  total: null, // the whole queue's length when the endpoint says it
  items: [],
  more: true,
  loading: false,
  generation: 0, // bumped by every (re)load: answers for an older one are dropped
  selected: new Set(),
  anchor: null,
  focus: 0,
  busy: false,
  confirmedWrong: [], // relabelled this session: where "expand" grows from
  firstPaint: null,
};

function renderReview(view) {
  view.innerHTML = "";
  const classes = info.classes.map((c) => `<option>${esc(c)}</option>`).join("");
  view.append(
    el(`<section class="panel">
      <div class="toolbar">
        <label>Candidates <select id="source">${Object.keys(SOURCES).map((s) => `<option value="${s}">${s}</option>`).join("")}</select></label>
        <label id="p-image" hidden>image id <input id="image-id" size="18" placeholder="image_id"></label>
        <label id="p-start" title="start the queue at this position (deep queues)">from # <input id="start" type="number" min="1" value="${queue.base + 1}" style="width:6rem"></label>
        <label id="p-k">k <input id="k" type="number" min="1" max="1000" value="${queue.params.k}" style="width:5rem"></label>
        <label id="p-split">split <select id="split">${info.splits.map((s) => `<option>${esc(s)}</option>`).join("")}</select></label>
        <label id="p-label">label <select id="label"><option value="">any</option>${classes}</select></label>
        <button id="load" type="button" class="primary">Load</button>
        <span id="source-title" class="muted"></span>
      </div>
    </section>`),
  );
  view.append(
    el(`<section class="actionbar">
      <span class="count" id="selection-count">0 selected</span>
      <button id="select-all" type="button" title="a">Select all</button>
      <button id="select-none" type="button" title="Esc">Clear</button>
      <label>relabel as <select id="relabel-label">${classes}</select></label>
      <input id="reason" placeholder="reason (kept in the history)" size="26">
      <button id="relabel" type="button" class="danger" title="r">Relabel selection</button>
      <button id="confirm" type="button" class="primary" title="c">Confirm correct</button>
      <span class="hint">click, shift-click or arrows + space select · a all · Esc clear · Enter open · r relabel · c confirm</span>
    </section>`),
  );
  view.append(el(`<div class="grid-viewport" id="viewport" tabindex="0"><div class="grid-spacer" id="spacer"><div class="grid" id="grid"></div></div></div>`));

  $("#source").value = queue.source;
  $("#split").value = queue.params.split;
  $("#label").value = queue.params.label;
  if (!info.classes.length) infoReady.then(() => fillClasses(view)); // the queue loads meanwhile
  $("#image-id").value = queue.params.image_id;
  showParams();
  $("#source").addEventListener("change", () => {
    queue.source = $("#source").value;
    history.replaceState(null, "", `#/review/${queue.source}`);
    $("#start").value = 1; // a position in one queue means nothing in another
    showParams();
    loadQueue();
  });
  $("#load").addEventListener("click", loadQueue);
  $("#start").addEventListener("keydown", (event) => event.key === "Enter" && loadQueue());
  $("#select-all").addEventListener("click", selectAll);
  $("#select-none").addEventListener("click", clearSelection);
  $("#relabel").addEventListener("click", relabelSelection);
  $("#confirm").addEventListener("click", confirmSelection);
  const viewport = $("#viewport");
  viewport.addEventListener("scroll", () => draw({ force: false }), { passive: true });
  viewport.addEventListener("keydown", onGridKey);
  $("#grid").addEventListener("click", onCardClick);
  new ResizeObserver(() => draw({ force: false })).observe(viewport);
  loadQueue();
}

// what needs ui/info: the class and split choices
function fillClasses(view) {
  if (!view.contains($("#label"))) return; // the reviewer went to another page meanwhile
  const classes = info.classes.map((c) => `<option>${esc(c)}</option>`).join("");
  $("#label").innerHTML = `<option value="">any</option>${classes}`;
  $("#label").value = queue.params.label;
  $("#relabel-label").innerHTML = classes;
  $("#split").innerHTML = info.splits.map((s) => `<option>${esc(s)}</option>`).join("");
  $("#split").value = queue.params.split;
}

function showParams() {
  const source = queue.source;
  $("#p-image").hidden = source !== "similar";
  $("#p-start").hidden = !PAGED.includes(source);
  $("#p-k").hidden = !["trace", "expand", "similar"].includes(source);
  $("#p-split").hidden = !["expand", "similar", "images"].includes(source);
  $("#p-label").hidden = !["expand", "similar", "images"].includes(source);
  $("#source-title").textContent = SOURCES[source].title;
}

function readParams() {
  Object.assign(queue.params, {
    k: Number($("#k").value) || 5,
    split: $("#split").value,
    label: $("#label").value,
    image_id: $("#image-id").value.trim(),
    seeds: queue.confirmedWrong.slice(-200),
  });
  queue.base = PAGED.includes(queue.source) ? Math.max(0, (Number($("#start").value) || 1) - 1) : 0;
  if (queue.source === "expand" && !queue.params.seeds.length) {
    say("Expand grows from images you relabelled in this session: relabel some first (or pick another source).");
  }
}

async function loadQueue() {
  readParams();
  // a new generation: a page still on its way for the previous queue is dropped when it arrives
  Object.assign(queue, {
    generation: queue.generation + 1, loading: false, items: [], more: true, total: null,
    selected: new Set(), anchor: null, focus: 0, firstPaint: null,
  });
  queue.started = performance.now();
  updateSelection();
  $("#viewport").scrollTop = 0;
  draw();
  await loadMore();
}

async function loadMore() {
  if (queue.loading || !queue.more) return;
  queue.loading = true;
  const { source, generation } = queue;
  try {
    // at least a screenful and what lies just below it: one page, then every thumbnail batch at once
    const limit = Math.min(1000, Math.max(PAGE, columns() * (Math.ceil($("#viewport").clientHeight / ROW) + 5)));
    const page = await SOURCES[source].fetch(queue.base + queue.items.length, limit, queue.params);
    if (generation !== queue.generation) return; // the reviewer loaded another queue (or position) meanwhile
    const known = new Set(queue.items.map((i) => i.image_id));
    queue.items.push(...page.filter((i) => !known.has(i.image_id)));
    queue.more = page.length >= limit && PAGED.includes(source);
    if (page.total !== undefined) queue.total = page.total;
  } catch (error) {
    if (generation !== queue.generation) return;
    fail(error);
    queue.more = false;
  } finally {
    if (generation === queue.generation) queue.loading = false;
  }
  draw();
  updateSelection();
}

function columns() {
  return Math.max(1, Math.floor(($("#viewport").clientWidth + 8) / CELL));
}

// ---------------------------------------------------------------- the grid's thumbnails, a batch a request
// A screen is ~130 thumbnails; one request each spent most of the first paint in the bento's
// per-request work. ui/thumbnails answers BATCH of them as data: URLs. Batches are runs of the
// queue (positions k*BATCH..), so scrolling back asks the same URLs (the browser's cache answers).
const BATCH = 30;
const KEPT = 2000; // thumbnails kept in the page (most recently used): ~10 KB each
const thumbs = new Map(); // image id -> data: URL, or "" when the server could not make one
const missingWhy = new Map(); // image id -> why there is no thumbnail
const asked = new Set(); // image ids in a batch on its way

function keepThumb(id, url) {
  thumbs.delete(id);
  thumbs.set(id, url);
  if (thumbs.size > KEPT) thumbs.delete(thumbs.keys().next().value);
}

// Ask for the batches that hold queue positions from..to (exclusive) and are not all here yet.
function wantThumbnails(from, to) {
  for (let start = Math.floor(from / BATCH) * BATCH; start < to; start += BATCH) {
    const ids = queue.items.slice(start, start + BATCH).map((i) => i.image_id);
    if (!ids.some((id) => !thumbs.has(id) && !asked.has(id))) continue;
    ids.forEach((id) => asked.add(id));
    const query = new URLSearchParams({ size: pixels(THUMB), ids: ids.join(",") });
    call(`ui/thumbnails?${query}`, { method: "GET" })
      .then((answer) => {
        for (const [id, url] of Object.entries(answer.thumbnails)) keepThumb(id, url);
        for (const [id, why] of Object.entries(answer.missing)) {
          keepThumb(id, "");
          missingWhy.set(id, why);
        }
      }, fail)
      .finally(() => {
        ids.forEach((id) => asked.delete(id));
        showThumbnails();
      });
  }
}

// Put every thumbnail that has arrived into the grid's cards; the first time all those on screen are
// in (not the rows drawn beyond its edge), time it.
// `at`: the grid's columns, scroll position and height, when the caller has just read them.
function showThumbnails(at = null) {
  const images = [...document.querySelectorAll("#grid .card img")];
  if (!images.length) return;
  // read the layout before changing the cards: a read after a change forces a layout of every card
  const viewport = $("#viewport");
  const { cols, top, height } = at ?? { cols: columns(), top: viewport.scrollTop, height: viewport.clientHeight };
  for (const img of images) {
    if (img.getAttribute("src") || !thumbs.has(img.dataset.id)) continue;
    const url = thumbs.get(img.dataset.id);
    if (url) {
      img.src = url;
      img.alt = img.closest(".card").title; // the path
    } else {
      img.closest(".card").classList.add("no-picture");
      img.title = missingWhy.get(img.dataset.id) || "no picture";
    }
  }
  if (queue.firstPaint !== null) return;
  const onScreen = images.filter((img) => {
    const row = Math.floor(Number(img.closest(".card").dataset.index) / cols) * ROW;
    return row < top + height && row + ROW > top;
  });
  if (!onScreen.every((img) => img.getAttribute("src") || img.title)) return;
  const shown = onScreen.filter((img) => img.getAttribute("src"));
  Promise.all(shown.map((img) => img.decode().then(() => true, () => false))).then((decoded) => {
    if (queue.firstPaint !== null) return;
    queue.firstPaint = performance.now() - queue.started;
    window.bouncerTimings = {
      ...(window.bouncerTimings || {}),
      firstGrid: queue.firstPaint, // since the queue started loading
      sinceNavigation: performance.now(), // since the page was opened (performance's time origin)
      shown: onScreen.length,
      decoded: decoded.filter(Boolean).length + onScreen.length - shown.length,
    };
  });
}

let drawn = ""; // what the grid shows now: redraw only when the visible rows or the items change

function draw({ force = true } = {}) {
  const viewport = $("#viewport");
  if (!viewport) return;
  const grid = $("#grid");
  const [cols, top, height] = [columns(), viewport.scrollTop, viewport.clientHeight]; // read before any change
  const rows = Math.ceil(queue.items.length / cols);
  const first = Math.max(0, Math.floor(top / ROW) - 2);
  const last = Math.min(rows, Math.ceil((top + height) / ROW) + 2);
  const key = `${first}:${last}:${cols}:${queue.items.length}:${queue.source}`;
  if (!force && key === drawn) return;
  drawn = key;
  $("#spacer").style.height = `${rows * ROW}px`;
  grid.style.transform = `translateY(${first * ROW}px)`;
  grid.innerHTML = "";
  if (!queue.items.length) {
    grid.append(el(`<div class="empty">${queue.loading || queue.more ? "Loading…" : "Nothing to review here."}</div>`));
    return;
  }
  const caption = SOURCES[queue.source].caption;
  const end = Math.min(queue.items.length, last * cols);
  // one string, parsed once (a screen is ~130 cards); clicks are the grid's (see renderReview).
  // No alt text until the picture is in: an <img> with alt and no src draws a "broken image" box.
  const cards = [];
  for (let index = first * cols; index < end; index++) {
    const item = queue.items[index];
    const selected = queue.selected.has(item.image_id) ? " selected" : "";
    cards.push(`<div class="card${selected}" data-index="${index}" tabindex="-1" title="${esc(item.path)}"${index === queue.focus ? ' data-focus="1"' : ""}>
        <img alt="" width="${THUMB}" height="${THUMB}" data-id="${esc(item.image_id)}">
        <a class="open" href="#/image/${encodeURIComponent(item.image_id)}" title="open">⤢</a>
        <div class="caption">${caption(item)}</div>
      </div>`);
  }
  grid.innerHTML = cards.join("");
  showThumbnails({ cols, top, height }); // those already here
  wantThumbnails(first * cols, end);
  if (last * cols >= queue.items.length - cols * 2) loadMore(); // near the end: fetch the next page
}

function onCardClick(event) {
  const card = event.target.closest(".card");
  if (!card || event.target.closest("a")) return; // the open link navigates
  const index = Number(card.dataset.index);
  const id = queue.items[index].image_id;
  if (event.shiftKey && queue.anchor !== null) {
    const [from, to] = [Math.min(queue.anchor, index), Math.max(queue.anchor, index)];
    for (let i = from; i <= to; i++) queue.selected.add(queue.items[i].image_id);
  } else if (queue.selected.has(id)) {
    queue.selected.delete(id);
  } else {
    queue.selected.add(id);
  }
  queue.anchor = index;
  queue.focus = index;
  $("#viewport").focus({ preventScroll: true });
  updateSelection();
}

function onGridKey(event) {
  if (!queue.items.length || event.target.closest("input,select")) return;
  const cols = columns();
  const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -cols, ArrowDown: cols };
  if (event.key in moves) {
    event.preventDefault();
    const next = Math.max(0, Math.min(queue.items.length - 1, queue.focus + moves[event.key]));
    if (event.shiftKey) queue.selected.add(queue.items[queue.focus].image_id), queue.selected.add(queue.items[next].image_id);
    queue.focus = next;
    queue.anchor = next;
    scrollToFocus();
    updateSelection();
  } else if (event.key === " ") {
    event.preventDefault();
    const id = queue.items[queue.focus].image_id;
    queue.selected.has(id) ? queue.selected.delete(id) : queue.selected.add(id);
    queue.anchor = queue.focus;
    updateSelection();
  } else if (event.key === "a" || (event.key === "A" && (event.ctrlKey || event.metaKey))) {
    event.preventDefault();
    selectAll();
  } else if (event.key === "Escape") {
    clearSelection();
  } else if (event.key === "Enter") {
    location.hash = `#/image/${encodeURIComponent(queue.items[queue.focus].image_id)}`;
  } else if (event.key === "r") {
    relabelSelection();
  } else if (event.key === "c") {
    confirmSelection();
  }
}

function scrollToFocus() {
  const viewport = $("#viewport");
  const row = Math.floor(queue.focus / columns());
  if (row * ROW < viewport.scrollTop) viewport.scrollTop = row * ROW;
  else if ((row + 1) * ROW > viewport.scrollTop + viewport.clientHeight) viewport.scrollTop = (row + 1) * ROW - viewport.clientHeight;
}

function selectAll() {
  queue.items.forEach((item) => queue.selected.add(item.image_id));
  updateSelection();
}

function clearSelection() {
  queue.selected.clear();
  updateSelection();
}

// "120 of 9,871" or "#50,001–50,120 of 98,311": where the loaded part of the queue lies in the whole one
function position() {
  const shown = queue.items.length;
  const loaded = queue.base ? `#${(queue.base + 1).toLocaleString()}–${(queue.base + shown).toLocaleString()}` : shown.toLocaleString();
  if (queue.total !== null) return `${loaded} of ${queue.total.toLocaleString()}`;
  return `${loaded}${queue.more ? "+" : ""}`;
}

function updateSelection() {
  const count = $("#selection-count");
  if (count) count.textContent = `${queue.selected.size} selected · ${position()}`;
  for (const card of document.querySelectorAll(".card")) {
    const index = Number(card.dataset.index);
    card.classList.toggle("selected", queue.selected.has(queue.items[index]?.image_id));
    card.toggleAttribute("data-focus", index === queue.focus);
  }
  const busy = queue.busy || !queue.selected.size;
  for (const id of ["relabel", "confirm"]) if ($(`#${id}`)) $(`#${id}`).disabled = busy;
}

// One write at a time: a double click or a repeated key cannot apply a decision twice.
async function decide(kind) {
  if (queue.busy || !queue.selected.size) return;
  const ids = [...queue.selected];
  const reason = $("#reason").value.trim();
  queue.busy = true;
  updateSelection();
  try {
    if (kind === "relabel") {
      const label = $("#relabel-label").value;
      const result = await write("relabel", { image_ids: ids, label, reason: reason || "review page" });
      count(ids.length, result.changed.length);
      queue.confirmedWrong.push(...result.changed.map((c) => c.image_id));
      done(ids, `Relabelled ${result.changed.length} as ${label}${result.unchanged.length ? ` (${result.unchanged.length} already were)` : ""}.`, result.event_id);
    } else {
      const result = await write("confirm", { image_ids: ids, reason: reason || "review page" });
      count(ids.length, 0);
      done(ids, `Confirmed ${ids.length} as correct.`, result.event_id);
    }
  } catch (error) {
    fail(error); // the selection stays: nothing was lost
  } finally {
    queue.busy = false;
    updateSelection();
  }
}

function done(ids, text, eventId) {
  const gone = new Set(ids);
  const before = queue.items.length;
  queue.items = queue.items.filter((item) => !gone.has(item.image_id)); // reviewed: they leave the queue
  if (queue.total !== null && queue.source === "suspects") queue.total -= before - queue.items.length; // and the ranking
  queue.selected.clear();
  queue.focus = Math.min(queue.focus, Math.max(0, queue.items.length - 1));
  draw();
  updateSelection();
  const undo = eventId === null || eventId === undefined ? null : { label: "Undo", run: () => undoEvent(eventId, () => loadQueue()) };
  say(text, { kind: "success", action: undo, seconds: 15 });
}

const relabelSelection = () => decide("relabel");
const confirmSelection = () => decide("confirm");

async function undoEvent(eventId, after) {
  try {
    const result = await write("undo", { event_id: eventId });
    count(0, -result.changed.filter((c) => c.old_label !== c.new_label).length); // the count is net
    say(`Undone (event ${result.event_id}).`, { kind: "success" });
    after?.();
  } catch (error) {
    fail(error);
  }
}

// ---------------------------------------------------------------- the image page
async function renderImage(view, id) {
  view.innerHTML = `<p class="muted">Loading ${esc(id)}…</p>`;
  let record;
  try {
    record = await call(`ui/record/${encodeURIComponent(id)}`, { method: "GET" });
  } catch (error) {
    view.innerHTML = `<p class="warning">${esc(error.message)}</p>`;
    return;
  }
  const classes = info.classes.map((c) => `<option ${c === record.label ? "selected" : ""}>${esc(c)}</option>`).join("");
  view.innerHTML = "";
  view.append(
    el(`<div class="image-page">
      <section>
        <h2>${esc(record.path)}</h2>
        <img class="large" alt="${esc(record.path)}" src="${original(id)}">
        <p>label <b id="current-label">${esc(record.label)}</b> · split ${esc(record.split)} · folder ${esc(record.folder_label)} · id <code>${esc(id)}</code></p>
        <div class="toolbar">
          <label>relabel as <select id="one-label">${classes}</select></label>
          <input id="one-reason" placeholder="reason" size="20">
          <button id="one-relabel" type="button" class="danger">Relabel</button>
          <button id="one-confirm" type="button" class="primary">Confirm correct</button>
        </div>
      </section>
      <section>
        <div class="panel"><h3>Prediction</h3><div id="prediction" class="muted">…</div></div>
        <div class="panel"><h3>Label history</h3><ul class="history" id="history"><li class="muted">…</li></ul></div>
        <div class="panel"><h3>Nearest neighbours (train)</h3><div class="neighbours" id="neighbours">…</div></div>
      </section>
    </div>`),
  );
  const once = async (button, run) => {
    if (button.disabled) return;
    button.disabled = true;
    try {
      await run();
    } catch (error) {
      fail(error);
    } finally {
      button.disabled = false;
    }
  };
  $("#one-relabel").addEventListener("click", (e) =>
    once(e.target, async () => {
      const label = $("#one-label").value;
      const result = await write("relabel", { image_ids: [id], label, reason: $("#one-reason").value || "image page" });
      count(1, result.changed.length);
      say(`Relabelled as ${label}.`, { kind: "success" });
      renderImage(view, id);
    }),
  );
  $("#one-confirm").addEventListener("click", (e) =>
    once(e.target, async () => {
      await write("confirm", { image_ids: [id], reason: $("#one-reason").value || "image page" });
      count(1, 0);
      say("Confirmed as correct.", { kind: "success" });
      loadHistory(view, id);
    }),
  );
  loadPrediction(id);
  loadHistory(view, id);
  loadNeighbours(id);
}

async function loadPrediction(id) {
  try {
    const blob = await (await fetch(original(id))).blob();
    const form = new FormData();
    form.append("image", blob, "image");
    const p = await call("predict", { form });
    const rows = Object.entries(p.probabilities)
      .sort((a, b) => b[1] - a[1])
      .map(([label, prob]) => `<span>${esc(label)}</span><div class="bar" style="width:${(prob * 100).toFixed(1)}%"></div><span>${fmt(prob, 3)}</span>`)
      .join("");
    $("#prediction").innerHTML = `<p><b>${esc(p.label)}</b> (${fmt(p.confidence, 3)}) by model ${esc(p.model_version)}</p><div class="bars">${rows}</div>`;
  } catch (error) {
    $("#prediction").innerHTML = `<span class="warning">${esc(error.message)}</span>`;
  }
}

async function loadHistory(view, id) {
  try {
    const events = await api("history", { image_id: id, limit: 50 });
    const list = $("#history");
    list.innerHTML = events.length ? "" : `<li class="muted">No event: the label is the folder's.</li>`;
    for (const e of events) {
      const change = e.changes[0];
      const what =
        e.kind === "confirm" ? `confirmed <b>${esc(change?.new_label)}</b>` : `${esc(change?.old_label)} → <b>${esc(change?.new_label)}</b>`;
      const item = el(`<li><b>${esc(e.kind)}</b> #${e.event_id} ${what} · ${esc(new Date(e.created_at).toLocaleString())} · ${esc(e.actor)}${e.reason ? ` · “${esc(e.reason)}”` : ""}
        ${e.reverted_by_event_id ? `<span class="muted">(undone by #${e.reverted_by_event_id})</span>` : ""}</li>`);
      if (!e.reverted_by_event_id && e.kind !== "undo" && e.kind !== "move") {
        const button = el(`<button type="button">Undo</button>`);
        button.addEventListener("click", async () => {
          button.disabled = true;
          await undoEvent(e.event_id, () => renderImage(view, id));
          button.disabled = false;
        });
        item.append(" ", button);
      }
      list.append(item);
    }
  } catch (error) {
    $("#history").innerHTML = `<li class="warning">${esc(error.message)}</li>`;
  }
}

async function loadNeighbours(id) {
  try {
    const { results } = await api("similar", { image_id: id, k: 12, split: "train" });
    $("#neighbours").innerHTML = results
      .map(
        (n) => `<a href="#/image/${encodeURIComponent(n.image_id)}" title="${esc(n.path)}"><img alt="" src="${thumbnail(n.image_id, 110)}">${esc(n.label)} · ${fmt(n.distance, 2)}</a>`,
      )
      .join("");
  } catch (error) {
    $("#neighbours").innerHTML = `<span class="warning">${esc(error.message)}</span>`;
  }
}

// ---------------------------------------------------------------- evaluation
async function renderEvaluation(view, split = "test") {
  view.innerHTML = `<p class="muted">Evaluating the serving model on the ${esc(split)} split…</p>`;
  let report;
  try {
    report = await api("evaluate", { split });
  } catch (error) {
    view.innerHTML = `<p class="warning">${esc(error.message)}</p>`;
    return;
  }
  const { labels, matrix } = report.confusion_matrix;
  const peak = Math.max(1, ...matrix.flat());
  const head = labels.map((l) => `<th class="predicted">${esc(l)}</th>`).join("");
  const body = matrix
    .map(
      (row, i) =>
        `<tr><th>${esc(labels[i])}</th>${row
          .map((n, j) => {
            const strength = n / peak;
            const color = i === j ? `rgba(31,138,76,${0.1 + 0.6 * strength})` : n ? `rgba(194,55,47,${0.15 + 0.7 * strength})` : "#f3f4f7";
            return `<td class="cell" data-true="${esc(labels[i])}" data-predicted="${esc(labels[j])}" style="background:${color}" title="${esc(labels[i])} taken for ${esc(labels[j])}">${n}</td>`;
          })
          .join("")}</tr>`,
    )
    .join("");
  const perClass = Object.entries(report.per_class)
    .map(([c, s]) => `<tr><td>${esc(c)}</td><td>${fmt(s.precision)}</td><td>${fmt(s.recall)}</td><td>${fmt(s.f1)}</td><td>${s.support}</td></tr>`)
    .join("");
  view.innerHTML = "";
  view.append(
    el(`<div>
      <section class="panel">
        <div class="toolbar"><label>split <select id="eval-split">${info.splits.map((s) => `<option ${s === split ? "selected" : ""}>${esc(s)}</option>`).join("")}</select></label>
          <span class="muted">model ${esc(report.model_version)} · data version ${esc(report.data_version)}</span></div>
        <div class="figures">
          <div class="figure">${fmt(report.accuracy)}<small>accuracy on ${report.n} images</small></div>
          <div class="figure">${fmt(report.baseline_accuracy)}<small>always the most common label</small></div>
          <div class="figure">${fmt(report.loss)}<small>log loss</small></div>
        </div>
        ${report.warning ? `<p class="warning">${esc(report.warning)}</p>` : ""}
      </section>
      <section class="panel"><h3>Confusion matrix (rows: true label, columns: predicted): click a cell</h3>
        <table class="confusion"><thead><tr><th></th>${head}</tr></thead><tbody>${body}</tbody></table></section>
      <section class="panel" id="cell-panel" hidden><h3 id="cell-title"></h3><div class="neighbours" id="cell-images"></div></section>
      <section class="panel"><h3>Per class</h3><table><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr></thead><tbody>${perClass}</tbody></table></section>
    </div>`),
  );
  $("#eval-split").addEventListener("change", () => renderEvaluation(view, $("#eval-split").value));
  view.querySelectorAll("td.cell").forEach((cell) =>
    cell.addEventListener("click", async () => {
      view.querySelectorAll("td.cell.active").forEach((c) => c.classList.remove("active"));
      cell.classList.add("active");
      const { true: label, predicted } = cell.dataset;
      $("#cell-panel").hidden = false;
      $("#cell-title").textContent = `${label} predicted as ${predicted}`;
      $("#cell-images").innerHTML = `<span class="muted">…</span>`;
      try {
        const images = await api("confusion", { split, label, predicted, limit: 200 });
        $("#cell-images").innerHTML = images.length
          ? images
              .map(
                (m) => `<a href="#/image/${encodeURIComponent(m.image_id)}" title="${esc(m.path)}"><img alt="" src="${thumbnail(m.image_id, 110)}">${fmt(m.confidence, 2)}</a>`,
              )
              .join("")
          : `<span class="muted">No image.</span>`;
      } catch (error) {
        $("#cell-images").innerHTML = `<span class="warning">${esc(error.message)}</span>`;
      }
    }),
  );
}

// ---------------------------------------------------------------- drift
const WINDOWS = { "1h": 24, "24h": 14, "7d": 8 }; // window -> how many to show

async function renderDrift(view, window = "24h") {
  view.innerHTML = `<p class="muted">Comparing recent predictions with the training data…</p>`;
  let report;
  try {
    report = await api("drift", { window, windows: WINDOWS[window] });
  } catch (error) {
    view.innerHTML = `<p class="warning">${esc(error.message)}</p>`;
    return;
  }
  const newest = report.windows[0];
  const verdictClass = report.verdict === "drift" ? "warning" : report.verdict === "no drift" ? "ok" : "muted";
  const rows = report.windows
    .map(
      (w) => `<tr class="${w.verdict === "drift" ? "drifted" : ""}"><td>${esc(new Date(w.start).toLocaleString())}</td><td>${w.n}</td>
        <td>${w.ood.share === null ? "–" : `${(100 * w.ood.share).toFixed(1)}%`}</td><td>${fmt(w.labels.js_distance, 2)}</td>
        <td>${fmt(w.embedding.ks_max, 2)}</td><td>${esc(w.verdict)}</td><td class="muted">${esc(w.reasons.join("; "))}</td></tr>`,
    )
    .join("");
  view.innerHTML = "";
  view.append(
    el(`<div>
      <section class="panel">
        <div class="toolbar"><label>window <select id="drift-window">${Object.keys(WINDOWS).map((w) => `<option ${w === window ? "selected" : ""}>${w}</option>`).join("")}</select></label>
          <span class="muted">model ${esc(report.model_version)} · reference: ${esc(report.reference.source)} (${report.reference.n} images) · α ${report.alpha}</span></div>
        <div class="figures">
          <div class="figure"><span class="${verdictClass}" id="drift-verdict">${esc(report.verdict)}</span><small>newest window (${newest.n} predictions)</small></div>
          <div class="figure">${newest.ood.share === null ? "–" : `${(100 * newest.ood.share).toFixed(1)}%`}<small>out of distribution (expected ${(100 * newest.ood.expected).toFixed(1)}%)</small></div>
        </div>
        ${report.reasons.map((r) => `<p class="${report.verdict === "drift" ? "warning" : "muted"}">${esc(r)}</p>`).join("")}
        ${report.windows.some((w) => w.n > 0) ? driftChart(report.windows) : `<p class="muted" id="drift-empty">No prediction was logged in these windows yet: the trend appears as <code>predict</code> answers.</p>`}
      </section>
      <section class="panel"><h3>Pull recent out-of-distribution images into the review queue</h3>
        <p class="muted">They may belong in the training set. Each logged image (kept with <code>BOUNCER_LOG_IMAGES=ood</code> or <code>all</code>)
          is copied into the train split under its predicted label, unreviewed, to relabel or confirm.</p>
        <div class="toolbar"><button id="import-ood" type="button" class="primary">Import the OOD images of the last ${esc(window)}</button>
          <label><input id="import-all" type="checkbox"> also those not flagged OOD</label></div>
      </section>
      <section class="panel"><h3>Windows, newest first</h3>
        <table id="drift-windows"><thead><tr><th>from</th><th>predictions</th><th>OOD share</th><th>label JS</th><th>embedding KS</th><th>verdict</th><th>why</th></tr></thead><tbody>${rows}</tbody></table>
        <p class="muted">${Object.entries(report.methods).map(([k, m]) => `${esc(k)}: ${esc(m)}`).join("<br>")}</p></section>
    </div>`),
  );
  $("#drift-window").addEventListener("change", () => renderDrift(view, $("#drift-window").value));
  $("#import-ood").addEventListener("click", async () => {
    const button = $("#import-ood");
    if (button.disabled) return;
    button.disabled = true;
    try {
      const imported = await write("import_predictions", { since: window, limit: 500, ood_only: !$("#import-all").checked });
      if (!imported.length) {
        say("No out-of-distribution image was kept in that time (images are kept only with BOUNCER_LOG_IMAGES=ood or all).");
        return;
      }
      sessionStorage.setItem(IMPORTED_KEY, JSON.stringify(imported));
      say(`Imported ${imported.length} image${imported.length === 1 ? "" : "s"} into the train split: review them now.`, { kind: "success" });
      queue.source = "imported";
      location.hash = "#/review/imported";
    } catch (error) {
      fail(error);
    } finally {
      button.disabled = false;
    }
  });
}

// The trend, oldest window on the left: OOD share against its expected share, label and embedding shift.
function driftChart(windows) {
  const points = [...windows].reverse();
  if (points.length < 2) return "";
  const width = 560, height = 150, pad = 26;
  const top = Math.max(0.05, ...points.map((w) => Math.max(w.ood.share ?? 0, w.ood.expected ?? 0)));
  const x = (i) => pad + (i * (width - 2 * pad)) / (points.length - 1);
  const y = (v, scale = 1) => height - pad - (Math.min(v / scale, 1) * (height - 2 * pad));
  const line = (values, color, scale, dash = "") =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" ${dash} points="${values
      .map((v, i) => (v === null || v === undefined ? null : `${x(i)},${y(v, scale)}`))
      .filter(Boolean)
      .join(" ")}"/>`;
  const marks = points
    .map((w, i) => (w.verdict === "drift" ? `<circle cx="${x(i)}" cy="${pad / 2}" r="4" fill="#c2372f"><title>drift</title></circle>` : ""))
    .join("");
  return `<svg class="chart" id="drift-chart" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="drift by window">
      ${line(points.map((w) => w.ood.expected), "#9aa3b5", top, 'stroke-dasharray="4 4"')}
      ${line(points.map((w) => w.ood.share), "#c2372f", top)}
      ${line(points.map((w) => w.labels.js_distance ?? null), "#2f6fde", 1)}
      ${line(points.map((w) => w.embedding.ks_max ?? null), "#1f8a4c", 1)}${marks}</svg>
    <div class="legend"><span style="color:#c2372f">■ OOD share (0–${(100 * top).toFixed(0)}%)</span><span style="color:#9aa3b5">■ expected</span>
      <span style="color:#2f6fde">■ label JS distance</span><span style="color:#1f8a4c">■ embedding KS</span><span class="muted">● drift</span></div>`;
}

// ---------------------------------------------------------------- models and training
let polling = null;

async function renderModels(view) {
  view.innerHTML = "";
  view.append(
    el(`<div>
      <section class="panel">
        <h2>Train</h2>
        <div class="toolbar">
          <label>epochs <input id="epochs" type="number" min="1" max="1000" placeholder="default" style="width:6rem"></label>
          <label><input id="force" type="checkbox"> promote even if not better</label>
          <button id="train" type="button" class="primary">Train on the current labels</button>
          <button id="cancel" type="button" hidden>Cancel</button>
        </div>
        <div id="progress"></div>
      </section>
      <section class="panel"><h2>Versions of this dataset</h2><div id="versions" class="muted">…</div></section>
    </div>`),
  );
  $("#train").addEventListener("click", submitTraining);
  $("#cancel").addEventListener("click", cancelTraining);
  loadVersions();
  watchTraining();
}

async function loadVersions() {
  let versions;
  try {
    versions = await api("models");
  } catch (error) {
    $("#versions").innerHTML = `<span class="warning">${esc(error.message)}</span>`;
    return;
  }
  const rows = versions
    .map((v) => {
      const recipe = v.recipe ? `${esc(v.recipe.backbone)} ${v.recipe.image_size}px` : "–";
      const verdict = v.beats_baseline === false ? `<span class="warning" title="${esc(v.warning)}">no better than the majority label</span>` : "";
      return `<tr class="${v.serving ? "serving" : ""}"><td><code>${esc(v.version)}</code> ${v.serving ? '<span class="badge">serving</span>' : ""}</td>
        <td>${esc(new Date(v.created_at).toLocaleString())}</td><td>${fmt(v.metrics.test_accuracy)}</td><td>${fmt(v.metrics.baseline_accuracy)}</td>
        <td>${esc(v.data_version)}</td><td>${recipe}</td><td>${verdict}</td>
        <td>${v.serving ? "" : `<button type="button" data-version="${esc(v.version)}">Serve this</button>`}</td></tr>`;
    })
    .join("");
  $("#versions").innerHTML = `<table><thead><tr><th>version</th><th>registered</th><th>test accuracy</th><th>baseline</th><th>data version</th><th>recipe</th><th></th><th></th></tr></thead><tbody>${rows}</tbody></table>`;
  $("#versions").classList.remove("muted");
  document.querySelectorAll("#versions button[data-version]").forEach((button) =>
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const result = await write("promote", { version: button.dataset.version, reason: "review page" });
        say(`Now serving ${result.version} (was ${result.previous_version}).`, { kind: "success" });
        await refreshInfo();
        loadVersions();
      } catch (error) {
        fail(error);
        button.disabled = false;
      }
    }),
  );
}

async function submitTraining() {
  const button = $("#train");
  if (button.disabled) return;
  button.disabled = true;
  try {
    const epochs = Number($("#epochs").value) || null;
    const task = await write("train/submit", { epochs, force: $("#force").checked });
    say(`Training started (task ${task.task_id}).`, { kind: "success" });
    watchTraining(task.task_id);
  } catch (error) {
    fail(error);
    button.disabled = false;
  }
}

async function cancelTraining() {
  const status = await api("train_progress").catch(() => null);
  if (!status?.task_id) return;
  try {
    await call(`train/cancel?task_id=${encodeURIComponent(status.task_id)}`, { method: "PUT", write: true });
    say("Training canceled.", { kind: "success" });
  } catch (error) {
    fail(error);
  }
}

// taskId: a training just submitted. Until its process has started, train_progress still
// describes the previous run (or none): keep polling rather than stop at that answer.
function watchTraining(taskId = null) {
  clearInterval(polling);
  const since = Date.now();
  const tick = async () => {
    if (!$("#progress")) return clearInterval(polling);
    let status;
    try {
      status = await api("train_progress");
    } catch (error) {
      $("#progress").innerHTML = `<span class="warning">${esc(error.message)}</span>`;
      return;
    }
    const waiting = taskId && status.task_id !== taskId && Date.now() - since < 120_000;
    if (waiting) return; // not started yet: the page keeps what it shows
    showProgress(status);
    if (status.state !== "running") {
      clearInterval(polling);
      $("#train").disabled = false;
      if (status.state === "succeeded") {
        await refreshInfo();
        loadVersions();
      }
    }
  };
  tick();
  polling = setInterval(tick, 1000);
}

function showProgress(s) {
  $("#cancel").hidden = s.state !== "running";
  $("#train").disabled = s.state === "running";
  if (s.state === "idle") {
    $("#progress").innerHTML = `<p class="muted" id="no-task">No training task has run for this dataset on this server yet
      (versions trained with <code>bouncer train</code> are listed below).</p>`;
    return;
  }
  const r = s.result;
  const interval = r?.test_accuracy_interval ? ` (test accuracy ${fmt(r.metrics.test_accuracy)}, 95% in [${fmt(r.test_accuracy_interval[0], 2)}, ${fmt(r.test_accuracy_interval[1], 2)}])` : "";
  const result = r
    ? `<p class="${r.promoted ? "ok" : "warning"}" id="promotion">${esc(r.promotion_message)}${interval}</p>
       ${[r.promotion_warning, r.warning].filter(Boolean).map((w) => `<p class="warning">${esc(w)}</p>`).join("")}
       <p class="muted">${esc(r.bento_message || "")}</p>`
    : "";
  const error = s.error && s.state !== "succeeded" ? `<p class="warning">${esc(s.error.split("\n")[0])}</p>` : "";
  // While it runs, the phase's message; once it has a result, that says it (not the same sentence twice).
  const doing = s.state === "running" || !r ? ` · ${esc(s.phase || "")}${s.message ? ` · ${esc(s.message)}` : ""}` : "";
  const epochs = s.epochs ? ` <progress max="${s.epochs}" value="${s.epoch || 0}"></progress> epoch ${s.epoch || 0}/${s.epochs}` : "";
  $("#progress").innerHTML = `<p class="status-line"><b>${esc(s.state)}</b>${doing} · ${fmt(s.elapsed_s, 0)} s${epochs}</p>
    ${chart(s.history || [])}${result}${error}`;
}

// Loss and accuracy by epoch, with axes: accuracy 0-1 on the left, loss 0-max on the right, epochs below.
function chart(history) {
  if (history.length < 2) return "";
  const width = 520, height = 180, left = 38, right = 44, top = 12, bottom = 30;
  const series = [
    ["loss", "#c2372f"],
    ["accuracy", "#2f6fde"],
    ["val_accuracy", "#1f8a4c"],
  ].filter(([key]) => key in history[0]);
  const lossTop = Math.max(1, ...history.map((h) => h.loss || 0));
  const x = (i) => left + (i * (width - left - right)) / (history.length - 1);
  const y = (v, key) => height - bottom - ((key === "loss" ? v / lossTop : v) * (height - top - bottom));
  const lines = series
    .map(([key, color]) => `<polyline fill="none" stroke="${color}" stroke-width="2" points="${history.map((h, i) => `${x(i)},${y(h[key], key)}`).join(" ")}"/>`)
    .join("");
  const ticks = [0, 0.5, 1]
    .map((t) => `<line x1="${left}" x2="${width - right}" y1="${y(t)}" y2="${y(t)}" class="grid"/>
      <text x="${left - 6}" y="${y(t) + 4}" text-anchor="end">${t}</text>
      <text x="${width - right + 6}" y="${y(t) + 4}">${fmt(t * lossTop, 1)}</text>`)
    .join("");
  const step = Math.max(1, Math.ceil(history.length / 8));
  const epochs = history
    .map((h, i) => (i % step === 0 || i === history.length - 1 ? `<text x="${x(i)}" y="${height - bottom + 16}" text-anchor="middle">${h.epoch ?? i + 1}</text>` : ""))
    .join("");
  const axes = `<g class="axis" id="accuracy-axis">${ticks}</g><g class="axis" id="epoch-axis">${epochs}
      <text x="${(left + width - right) / 2}" y="${height - 2}" text-anchor="middle">epoch</text></g>`;
  const legend = series.map(([key, color]) => `<span style="color:${color}">■ ${key}${key === "loss" ? " (right axis)" : ""}</span>`).join("");
  return `<figure class="chart-figure"><div class="legend">${legend}</div>
    <svg class="chart" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="loss and accuracy by epoch">${axes}${lines}</svg></figure>`;
}

// ---------------------------------------------------------------- routing
async function route() {
  const view = $("#view");
  clearInterval(polling);
  const [, name = "review", arg] = location.hash.match(/^#\/([^/]+)\/?(.*)$/) || [];
  if (name !== "review") await infoReady;
  document.querySelectorAll("header nav a[data-view]").forEach((a) => a.classList.toggle("active", a.dataset.view === name));
  if (name === "image" && arg) return renderImage(view, decodeURIComponent(arg));
  if (name === "evaluation") return renderEvaluation(view);
  if (name === "models") return renderModels(view);
  if (name === "drift") return renderDrift(view);
  if (arg && arg in SOURCES) queue.source = arg; // #/review/trace opens that queue
  return renderReview(view);
}

async function start() {
  $("#token-button").addEventListener("click", () => askForToken());
  $("#token-dialog").addEventListener("close", () => {
    const choice = $("#token-dialog").returnValue;
    if (choice === "save") localStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
    if (choice === "clear") localStorage.removeItem(TOKEN_KEY);
    showTokenState();
  });
  count(0, 0);
  showTokenState();
  infoReady = refreshInfo().then(showTokenState, fail);
  window.addEventListener("hashchange", route);
  route();
}

start();
