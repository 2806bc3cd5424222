"""The framework's ceiling for benchmarks/predict.py: a BentoML endpoint that takes the same upload and does nothing.

Same BentoML, same worker count, same ``image`` file field, a constant answer: what
BentoML's ``@api`` path costs before any model runs. Bouncer's predict above this
line is the plumbing it skips (see bento_service/predict_route.py).

    bentoml serve benchmarks.trivial_service:Trivial --port 3002
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml

WORKERS = int(os.environ.get("BOUNCER_BENCH_WORKERS", os.cpu_count() or 1))


@bentoml.service(workers=WORKERS, logging={"access": {"enabled": False}}, tracing={"excluded_urls": ["/predict"]})
class Trivial:
    @bentoml.api
    def predict(self, image: Path) -> dict[str, str]:
        return {"label": "constant"}
