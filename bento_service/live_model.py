"""The model version a worker serves, swapped live when another version is promoted.

It starts on :meth:`training.registry.serving.Registry.serving_tag`'s choice (the promoted
version, else BOUNCER_MODEL_TAG, else the newest version trained on this dataset).
Promotion (``Registry.promote``, its one owner) is a row in the shared label database; every
worker polls it and, when it changes, loads the new version next to the old one
and swaps a single reference: a request that already holds the old model finishes
with it, the next one gets the new one, none is dropped.

Every promotion (the ``promote`` endpoint, a train task, ``bouncer promote``) also touches
a signal file beside the data (``Registry.promotion_signal``), which every worker on this machine
checks (one ``stat``) on each request: all of them serve the new version from their next
request on, not each at its next poll (a client would see new, old, new).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import bentoml

from training.registry.serving import ModelResolutionError, RegisteredModel, Registry

log = logging.getLogger("bentoml.bouncer")


class LiveModel:
    def __init__(self, registry: Registry, *, on_swap: Callable[[str], None] | None = None) -> None:
        """Serve this dataset's version (a ModelResolutionError, so no start-up, if it has none).

        ``on_swap``: told the tag of a version once it no longer serves (what it cached can go).
        """
        settings = registry.settings
        self._registry = registry
        self._on_swap = on_swap
        self._lock = threading.Lock()  # one load at a time
        self._follow_lock = threading.Lock()  # requests that saw the signal wait for the one that follows it
        tag = registry.serving_tag()
        promoted = registry.promoted_tag()
        # a promoted version this store does not hold: warned about once, not retried on every poll
        self._failed_tag = promoted if promoted is not None and promoted != tag else None
        self._threads = settings.ort_threads
        self._signal = registry.promotion_signal()
        self._signal_seen = self._signal_stamp()
        self._model = registry.load(tag, threads=self._threads)
        log.info("serving %s", self._model.tag)
        self._stop = threading.Event()
        self._poller = threading.Thread(
            target=self._poll, args=(settings.model_poll_seconds,), name="model-poller", daemon=True
        )
        self._poller.start()

    def get(self) -> RegisteredModel:
        """The current model; callers keep the returned object for the whole request."""
        stamp = self._signal_stamp()
        if stamp != self._signal_seen:  # a version was promoted here: follow it before answering
            with self._follow_lock:
                if stamp != self._signal_seen:
                    try:
                        self.refresh()
                    except Exception:  # the poller tries again; this request keeps the current version
                        log.exception("following the promoted model version failed")
                    self._signal_seen = stamp
        return self._model

    def _signal_stamp(self) -> int:
        try:
            return os.stat(self._signal).st_mtime_ns
        except OSError:
            return 0

    def swap_to(self, tag: str) -> RegisteredModel:
        """Load ``tag`` and serve it from now on (no-op if it already serves).

        ModelResolutionError if this store lacks it or its classes are not the dataset's.
        """
        with self._lock:
            if tag != self._model.tag:
                model = self._registry.load(self._registry.fitting_tag(tag), threads=self._threads)
                previous, self._model = self._model.tag, model
                log.info("now serving %s (was %s)", model.tag, previous)
                if self._on_swap is not None:
                    self._on_swap(previous)
            return self._model

    def refresh(self) -> None:
        """Follow the promotion record; a version this worker cannot serve is skipped with one warning."""
        promoted = self._registry.promoted_tag()
        if promoted is None or promoted == self._model.tag or promoted == self._failed_tag:
            return
        try:
            self.swap_to(promoted)
        except (ModelResolutionError, bentoml.exceptions.NotFound) as exc:
            self._failed_tag = promoted
            log.warning("not serving the promoted version %s: %s; still serving %s", promoted, exc, self._model.tag)

    def close(self) -> None:
        """Stop following promotions (at shutdown): the poller ends within one poll."""
        self._stop.set()
        self._poller.join(timeout=5)

    def _poll(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.refresh()
            except Exception:  # never let the poller die: log and try again next tick
                log.exception("checking the promoted model version failed")
