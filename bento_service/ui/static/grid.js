// The review queue's virtual grid: only the rows on screen are drawn, thumbnails come a batch a request,
// and the selection (click, shift-click, keys).

import { THUMB, call, pixels } from "./api.js";
import { $, el, esc, fail } from "./dom.js";
import { SOURCES, confirmSelection, loadMore, queue, relabelSelection } from "./views/review.js";

export const ROW = 222; // card height + gap, see style.css

export const CELL = 180; // card width + gap

export function columns() {
  return Math.max(1, Math.floor(($("#viewport").clientWidth + 8) / CELL));
}

// A screen is ~130 thumbnails; one request each spent most of the first paint in the bento's
// per-request work. ui/thumbnails answers BATCH of them as data: URLs. Batches are runs of the
// queue (positions k*BATCH..), so scrolling back asks the same URLs (the browser's cache answers).
export const BATCH = 30;

export const KEPT = 2000; // thumbnails kept in the page (most recently used): ~10 KB each

export const thumbs = new Map(); // image id -> data: URL, or "" when the server could not make one

export const missingWhy = new Map(); // image id -> why there is no thumbnail

export const asked = new Set(); // image ids in a batch on its way

export function keepThumb(id, url) {
  thumbs.delete(id);
  thumbs.set(id, url);
  if (thumbs.size > KEPT) thumbs.delete(thumbs.keys().next().value);
}

// Ask for the batches that hold queue positions from..to (exclusive) and are not all here yet.
export function wantThumbnails(from, to) {
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
export function showThumbnails(at = null) {
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

export let drawn = ""; // what the grid shows now: redraw only when the visible rows or the items change

export function draw({ force = true } = {}) {
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

export function onCardClick(event) {
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

export function onGridKey(event) {
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

export function scrollToFocus() {
  const viewport = $("#viewport");
  const row = Math.floor(queue.focus / columns());
  if (row * ROW < viewport.scrollTop) viewport.scrollTop = row * ROW;
  else if ((row + 1) * ROW > viewport.scrollTop + viewport.clientHeight) viewport.scrollTop = (row + 1) * ROW - viewport.clientHeight;
}

export function selectAll() {
  queue.items.forEach((item) => queue.selected.add(item.image_id));
  updateSelection();
}

export function clearSelection() {
  queue.selected.clear();
  updateSelection();
}

// "120 of 9,871" or "#50,001–50,120 of 98,311": where the loaded part of the queue lies in the whole one
export function position() {
  const shown = queue.items.length;
  const loaded = queue.base ? `#${(queue.base + 1).toLocaleString()}–${(queue.base + shown).toLocaleString()}` : shown.toLocaleString();
  if (queue.total !== null) return `${loaded} of ${queue.total.toLocaleString()}`;
  return `${loaded}${queue.more ? "+" : ""}`;
}

export function updateSelection() {
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
