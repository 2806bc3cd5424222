// Drift: logged predictions against the training data, per window, and pulling OOD images into the queue.

import { api, write } from "../api.js";
import { driftChart } from "../charts.js";
import { $, el, esc, fail, fmt, say } from "../dom.js";
import { queue } from "./review.js";
import { IMPORTED_KEY } from "../state.js";

export const WINDOWS = { "1h": 24, "24h": 14, "7d": 8 }; // window -> how many to show

export async function renderDrift(view, window = "24h") {
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
