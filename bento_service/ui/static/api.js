// The service's HTTP API, as the page calls it: reads, writes with the token, thumbnails and originals.

export const API = new URL("../", location.href); // the page lives at <service>/ui/

export const TOKEN_KEY = "bouncer-token";

export const THUMB = 156; // thumbnail size in CSS pixels (the server resizes)

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function call(path, { method = "POST", body, write = false, form } = {}) {
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
    if (response.status === 401) hooks.unauthorized(message);
    throw new ApiError(response.status, message);
  }
  // a paged list's whole length, when the endpoint says it (suspects, images)
  const total = response.headers.get("x-total-count");
  if (Array.isArray(data) && total !== null) Object.defineProperty(data, "total", { value: Number(total) });
  return data;
}

export const api = (endpoint, body = {}) => call(endpoint, { body });

export const write = (endpoint, body = {}) => call(endpoint, { body, write: true });

// as many pixels as the screen shows (2x on a high-density screen), no more: smaller, faster to make and load
export const pixels = (size) => Math.round(size * Math.min(2, Math.max(1, devicePixelRatio)));

export const thumbnail = (id, size = THUMB) => new URL(`ui/thumbnail/${encodeURIComponent(id)}?size=${pixels(size)}`, API);

export const original = (id) => new URL(`ui/image/${encodeURIComponent(id)}`, API);

// What to do when a write is refused for want of the token (state.js asks for it).
export const hooks = { unauthorized: () => {} };
