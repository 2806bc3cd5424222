// Small DOM helpers, and the one escaping function every interpolated value goes through (esc).

export const $ = (selector, root = document) => root.querySelector(selector);

export const esc = (text) =>
  String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

export const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

export const percent = (x) => (x === null || x === undefined ? "–" : `${Math.round(100 * x)}%`);

export const el = (html) => {
  const template = document.createElement("template");
  template.innerHTML = html.trim();
  return template.content.firstElementChild;
};

export function say(text, { kind = "info", action, seconds = 8 } = {}) {
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

export const fail = (error) => say(error.message || String(error), { kind: "error", seconds: 12 });
