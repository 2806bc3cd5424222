"""The curation cache has an owner and a bound: a promoted version's predecessor is forgotten (issue 23)."""

from __future__ import annotations

import numpy as np

from training.curation.curator import RESULTS_KEPT, VERSIONS_KEPT, CurationCache


def test_a_version_that_stops_serving_is_forgotten() -> None:
    cache = CurationCache()
    cache.probabilities("bouncer:v1")[("a", "sha")] = np.ones(3)
    cache.put(("db", "bouncer:v1", "evaluate", "test"), "report of v1")
    cache.put(("db", "bouncer:v2", "evaluate", "test"), "report of v2")
    cache.forget_version("bouncer:v1")
    assert cache.probabilities("bouncer:v1") == {}  # gone: a fresh, empty one
    assert cache.get(("db", "bouncer:v1", "evaluate", "test")) is None
    assert cache.get(("db", "bouncer:v2", "evaluate", "test")) == "report of v2"


def test_it_keeps_a_bounded_number_of_results_and_versions() -> None:
    cache = CurationCache()
    for i in range(RESULTS_KEPT + 10):
        cache.put(("db", "v", "evaluate", str(i)), i)
    assert cache.get(("db", "v", "evaluate", "0")) is None and cache.get(("db", "v", "evaluate", "25")) == 25
    for i in range(VERSIONS_KEPT + 3):
        cache.probabilities(f"v{i}")[("a", "sha")] = np.zeros(2)
    assert cache.probabilities("v0") == {}  # the oldest version's probabilities were dropped
    assert ("a", "sha") in cache.probabilities(f"v{VERSIONS_KEPT + 2}")
