"""The model version a worker serves, swapped live when another version is promoted.

Promotion is a row in the shared label database (``LabelStore.promote``). Every
worker polls it and, when it changes, loads the new version next to the old one
and swaps a single reference: a request that already holds the old model finishes
with it, the next one gets the new one, none is dropped.
"""

from __future__ import annotations

import logging
import threading

import bentoml

from training.label_store import LabelStore
from training.registry import RegisteredModel, load_registered

log = logging.getLogger("bentoml.bouncer")


class LiveModel:
    def __init__(self, store: LabelStore, model_name: str, default_tag: str, *, poll_seconds: float) -> None:
        """Serve the promoted version if there is one this store holds, else ``default_tag``."""
        self._store = store
        self._model_name = model_name
        self._lock = threading.Lock()
        self._failed_tag: str | None = None
        promoted = store.serving(model_name)
        self._model = self._load_promoted(promoted.tag) if promoted else None
        if self._model is None:
            self._model = load_registered(default_tag)
        log.info("serving %s", self._model.tag)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, args=(poll_seconds,), name="model-poller", daemon=True)
        self._poller.start()

    def get(self) -> RegisteredModel:
        """The current model; callers keep the returned object for the whole request."""
        return self._model

    def swap_to(self, tag: str) -> RegisteredModel:
        """Load ``tag`` and serve it from now on (no-op if it already serves)."""
        with self._lock:
            if tag != self._model.tag:
                model = load_registered(tag)
                previous, self._model = self._model.tag, model
                log.info("now serving %s (was %s)", model.tag, previous)
            return self._model

    def refresh(self) -> None:
        """Follow the promotion record; a version this worker cannot load is skipped with one warning."""
        promoted = self._store.serving(self._model_name)
        if promoted is None or promoted.tag == self._model.tag or promoted.tag == self._failed_tag:
            return
        try:
            self.swap_to(promoted.tag)
        except bentoml.exceptions.NotFound:
            self._failed_tag = promoted.tag
            log.warning(
                "promoted version %s is not in this model store; still serving %s", promoted.tag, self._model.tag
            )

    def close(self) -> None:
        self._stop.set()

    def _load_promoted(self, tag: str) -> RegisteredModel | None:
        try:
            return load_registered(tag)
        except bentoml.exceptions.NotFound:
            log.warning("promoted version %s is not in this model store; using the default", tag)
            self._failed_tag = tag
            return None

    def _poll(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.refresh()
            except Exception:  # never let the poller die: log and try again next tick
                log.exception("checking the promoted model version failed")
