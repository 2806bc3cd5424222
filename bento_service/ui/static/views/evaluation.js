// The evaluation: accuracy against the majority baseline, the confusion matrix (click a cell), per class.

import { api, thumbnail } from "../api.js";
import { $, el, esc, fmt } from "../dom.js";
import { info } from "../state.js";

export async function renderEvaluation(view, split = "test") {
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
