// The review queue: where candidates come from, paging through them, and the decisions on a selection.

import { api, write } from "../api.js";
import { $, el, esc, fail, fmt, percent, say } from "../dom.js";
import { ROW, clearSelection, columns, draw, onCardClick, onGridKey, selectAll, updateSelection } from "../grid.js";
import { IMPORTED_KEY, count, info, ready } from "../state.js";

export const PAGE = 120; // queue items fetched per request

// "label → suggestion", the arrow only when the suggestion is another class (it is often the label itself).
export const suggestion = (item) =>
  item.suggested_label && item.suggested_label !== item.label ? ` <span class="arrow">→ ${esc(item.suggested_label)}</span>` : "";

// Where candidates come from; each fetches one page (offset, limit) and says whether there are more.
export const SOURCES = {
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

export const PAGED = ["suspects", "trace", "images"]; // sources that page through a long list (offset, limit)

export const queue = {
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

export function renderReview(view) {
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
  if (!info.classes.length) ready.info.then(() => fillClasses(view)); // the queue loads meanwhile
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
export function fillClasses(view) {
  if (!view.contains($("#label"))) return; // the reviewer went to another page meanwhile
  const classes = info.classes.map((c) => `<option>${esc(c)}</option>`).join("");
  $("#label").innerHTML = `<option value="">any</option>${classes}`;
  $("#label").value = queue.params.label;
  $("#relabel-label").innerHTML = classes;
  $("#split").innerHTML = info.splits.map((s) => `<option>${esc(s)}</option>`).join("");
  $("#split").value = queue.params.split;
}

export function showParams() {
  const source = queue.source;
  $("#p-image").hidden = source !== "similar";
  $("#p-start").hidden = !PAGED.includes(source);
  $("#p-k").hidden = !["trace", "expand", "similar"].includes(source);
  $("#p-split").hidden = !["expand", "similar", "images"].includes(source);
  $("#p-label").hidden = !["expand", "similar", "images"].includes(source);
  $("#source-title").textContent = SOURCES[source].title;
}

export function readParams() {
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

export async function loadQueue() {
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

export async function loadMore() {
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

// One write at a time: a double click or a repeated key cannot apply a decision twice.
export async function decide(kind) {
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

export function done(ids, text, eventId) {
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

export const relabelSelection = () => decide("relabel");

export const confirmSelection = () => decide("confirm");

export async function undoEvent(eventId, after) {
  try {
    const result = await write("undo", { event_id: eventId });
    count(0, -result.changed.filter((c) => c.old_label !== c.new_label).length); // the count is net
    say(`Undone (event ${result.event_id}).`, { kind: "success" });
    after?.();
  } catch (error) {
    fail(error);
  }
}
