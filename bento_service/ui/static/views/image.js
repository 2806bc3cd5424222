// One image: large, its prediction, its label history with undo, its nearest training neighbours.

import { api, call, original, thumbnail, write } from "../api.js";
import { $, el, esc, fail, fmt, say } from "../dom.js";
import { count, info } from "../state.js";
import { undoEvent } from "./review.js";

export async function renderImage(view, id) {
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

export async function loadPrediction(id) {
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

export async function loadHistory(view, id) {
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

export async function loadNeighbours(id) {
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
