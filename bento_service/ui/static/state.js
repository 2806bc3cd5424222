// What the session knows: the API token, the decision counter, and the server's info (classes, splits).

import { TOKEN_KEY, call, hooks } from "./api.js";
import { $, say } from "./dom.js";

export const COUNTER_KEY = "bouncer-counter";

export const IMPORTED_KEY = "bouncer-imported"; // what the Drift page last imported: the "imported" queue

export const counter = JSON.parse(sessionStorage.getItem(COUNTER_KEY) || '{"decisions":0,"changed":0}');

export function count(decisions, changed) {
  counter.decisions += decisions;
  counter.changed += changed;
  sessionStorage.setItem(COUNTER_KEY, JSON.stringify(counter));
  $("#counter").textContent = `${counter.decisions} decisions · ${counter.changed} labels changed`;
}

export const info = { classes: [], splits: ["train", "test"], token_required: false, serving: "" };

export async function refreshInfo() {
  Object.assign(info, await call("ui/info", { method: "GET" }));
  $("#serving").textContent = info.serving ? `serving ${info.serving}` : "";
}

export function askForToken(reason) {
  const dialog = $("#token-dialog");
  if (reason) say(reason, { kind: "error" });
  $("#token-input").value = localStorage.getItem(TOKEN_KEY) || "";
  if (!dialog.open) dialog.showModal();
}

export function showTokenState() {
  const has = Boolean(localStorage.getItem(TOKEN_KEY));
  $("#token-button").classList.toggle("has-token", has);
  $("#token-button").textContent = has ? "Token ✓" : info.token_required ? "Token needed" : "Token";
}

export const ready = { info: Promise.resolve() }; // the first refreshInfo: the review queue does not wait for it, other pages do

hooks.unauthorized = askForToken;
