// Bouncer's review page: a queue of candidates to relabel or confirm, an image page, the evaluation,
// drift and the models, all over the service's own HTTP API. Native ES modules, no build step: one
// module per view (views/), the API (api.js), the session (state.js), the grid (grid.js), charts.

import { start } from "./router.js";

start();
