// Which view the URL's hash asks for, and the page's start.

import { $, fail } from "./dom.js";
import { askForToken, count, ready, refreshInfo, showTokenState } from "./state.js";
import { renderDrift } from "./views/drift.js";
import { renderEvaluation } from "./views/evaluation.js";
import { renderImage } from "./views/image.js";
import { renderModels, stopPolling } from "./views/models.js";
import { SOURCES, queue, renderReview } from "./views/review.js";
import { TOKEN_KEY } from "./api.js";

export async function route() {
  const view = $("#view");
  stopPolling();
  const [, name = "review", arg] = location.hash.match(/^#\/([^/]+)\/?(.*)$/) || [];
  if (name !== "review") await ready.info;
  document.querySelectorAll("header nav a[data-view]").forEach((a) => a.classList.toggle("active", a.dataset.view === name));
  if (name === "image" && arg) return renderImage(view, decodeURIComponent(arg));
  if (name === "evaluation") return renderEvaluation(view);
  if (name === "models") return renderModels(view);
  if (name === "drift") return renderDrift(view);
  if (arg && arg in SOURCES) queue.source = arg; // #/review/trace opens that queue
  return renderReview(view);
}

export async function start() {
  $("#token-button").addEventListener("click", () => askForToken());
  $("#token-dialog").addEventListener("close", () => {
    const choice = $("#token-dialog").returnValue;
    if (choice === "save") localStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
    if (choice === "clear") localStorage.removeItem(TOKEN_KEY);
    showTokenState();
  });
  count(0, 0);
  showTokenState();
  ready.info = refreshInfo().then(showTokenState, fail);
  window.addEventListener("hashchange", route);
  route();
}

start();
