// The model versions (promote, roll back) and training from the page, with live progress.

import { api, call, write } from "../api.js";
import { chart } from "../charts.js";
import { $, el, esc, fail, fmt, say } from "../dom.js";
import { refreshInfo } from "../state.js";

export let polling = null;

export async function renderModels(view) {
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

export async function loadVersions() {
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

export async function submitTraining() {
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

export async function cancelTraining() {
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
export function watchTraining(taskId = null) {
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

export function showProgress(s) {
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

// Leaving the page stops following a training.
export function stopPolling() {
  clearInterval(polling);
}
