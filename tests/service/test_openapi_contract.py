"""The OpenAPI document tells the truth: schemathesis fuzzes every operation of a served bento.

A server on its own copy of the demo (writes land there, not on the shared ``server``),
with an API token; its schema is read from ``/docs.json`` and must be valid OpenAPI. Every operation gets a
bounded, derandomized set of generated requests, valid ones and invalid ones, carrying
the token; then requests built from the demo's real ids (generated ids are mostly
unknown: these reach the 200 answers of image, similar, relabel, undo...); then every
write without the token. Each answer must be no 5xx, a documented status code, a body
conforming to the documented schema, a documented content type. Nothing is fetched but
the local server.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.conftest import TrainedDemo
from tests.service.conftest import copy_demo_data, running_server

pytestmark = pytest.mark.slow

schemathesis = pytest.importorskip("schemathesis")

TOKEN = "contract-test-token"
# Per operation and generation mode (valid and invalid requests): ~25 operations x 2 modes x 25 examples
# take well under a minute on 2 cores once the server is up.
MAX_EXAMPLES = 25
# Starting a training (the task run in the request, submitted, or retried) runs a child process,
# takes the training lock and may promote and build a bento: test_service_train.py covers those
# routes. Everything else, promote and cancel included, runs on this server's own copy of the data.
SKIPPED = {"POST /train", "POST /train/submit", "POST /train/retry"}


def _checks() -> list[Any]:
    """Every check schemathesis has (``--checks all``): status, content type, schema, positive data
    accepted, negative data rejected, methods, headers, auth."""
    from schemathesis.checks import CHECKS, is_check_class, load_all_checks

    load_all_checks()
    return [check for check in CHECKS.get_all() if not is_check_class(check)]


@dataclass
class Contract:
    """Calls cases against the server and keeps what it answered and every failed check."""

    url: str
    session: requests.Session = field(default_factory=requests.Session)
    statuses: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    failures: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def check(self, case: Any, kind: str, headers: dict[str, str] | None = None) -> int | None:
        """Send ``case``, run the checks; the status code (None if the request itself failed)."""
        from schemathesis.core.failures import Failure, FailureGroup

        label = case.operation.label
        try:
            response = case.call(base_url=self.url, session=self.session, headers=headers, timeout=30)
        except Exception as exc:  # connection reset, timeout...: the server did not answer
            self.failures[label].append(f"{kind}: {type(exc).__name__}: {exc}")
            return None
        self.statuses[label][response.status_code] += 1
        answered = f"{response.status_code} {response.content[:200].decode(errors='replace')}"
        checks = _checks()
        if kind != "known-good" and _takes_files(case.operation):
            # A schema cannot say "the bytes of an image": generated uploads are random bytes, rightly a 400
            # ("not an image"). Real images are accepted: known_good() sends them with every check.
            checks = [check for check in checks if check.__name__ != "positive_data_acceptance"]
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except FailureGroup as group:  # several checks failed: record each
            found = [f for f in group.exceptions if not _lost_in_a_form(case.operation, f)]
            if found:
                self.failures[label].extend(describe(failure, kind, answered) for failure in found)
        except Failure as failure:
            if not _lost_in_a_form(case.operation, failure):
                self.failures[label].append(describe(failure, kind, answered))
        return response.status_code

    def fuzz(self, operation: Any, mode: Any, headers: dict[str, str]) -> None:
        """``operation``'s generated cases in ``mode`` (positive: valid requests, negative: invalid ones)."""
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis.errors import Unsatisfiable

        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: each failure is recorded as found
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            self.check(case, mode.value, headers)

        with contextlib.suppress(Unsatisfiable):  # nothing to make invalid (no parameters): no negative cases
            run()

    def summary(self) -> str:
        lines = [
            f"schemathesis {schemathesis.__version__}: {len(self.statuses)} operations, "
            f"{sum(sum(c.values()) for c in self.statuses.values())} requests, "
            f"{sum(map(len, self.failures.values()))} failures in {len(self.failures)} operations"
        ]
        for label, statuses in sorted(self.statuses.items()):
            lines.append(f"  {label}: " + ", ".join(f"{s} x{n}" for s, n in sorted(statuses.items())))
        for label, found in sorted(self.failures.items()):
            lines.append(f"--- {label}: {len(found)} failures")
            lines.extend(dict.fromkeys(found))
        return "\n".join(lines)


def _lost_in_a_form(operation: Any, failure: Exception) -> bool:
    """A form cannot say 'an array' for a one-value field: an empty one is no part at all (the default), one
    item is one part. schemathesis allows for the one-item case only; the server refuses two or more parts."""
    message = str(getattr(failure, "message", failure))
    return _takes_files(operation) and "became array" in message


def _takes_files(operation: Any) -> bool:
    content = operation.definition.raw.get("requestBody", {}).get("content", {})
    return "multipart/form-data" in content


def describe(failure: Exception, kind: str, answered: str = "") -> str:
    """One line per failure: '<kind>: ST108 Response violates schema: <message> (answered: <status> <body>)'."""
    code = getattr(failure, "code", type(failure).__name__)
    title = getattr(failure, "title", "")
    message = " ".join(str(getattr(failure, "message", failure)).split())[:600]
    return f"{kind}: {code} {title}: {message} (answered: {' '.join(answered.split())})"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), (120, 10, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def known_good(contract: Contract, schema: Any, headers: dict[str, str]) -> None:
    """Requests built from the demo's real ids and labels: the answers a generated id rarely reaches."""
    ops = {op.label: op for op in (result.ok() for result in schema.get_all_operations())}

    def send(label: str, body: Any = None, media_type: str = "application/json", **kwargs: Any) -> Any:
        case = ops[label].Case(body=body, media_type=media_type, **kwargs) if body is not None else ops[label].Case()
        status = contract.check(case, "known-good", headers)
        return case, status

    post = contract.session.post
    listed = post(f"{contract.url}/images", json={"limit": 4, "split": "train"}, timeout=30).json()
    ids = [image["image_id"] for image in listed]
    labels = post(f"{contract.url}/evaluate", json={}, timeout=60).json()["confusion_matrix"]["labels"]
    other = next(label for label in labels if label != listed[0]["label"])
    png = _png()
    send("POST /image", {"image_id": ids[0]})
    send("POST /similar", {"image_id": ids[0], "k": 3})
    send("POST /similar", {"image_id": ids[0], "k": 3, "label": labels[0], "split": "test"})
    send("POST /similar_image", {"image": png, "k": 2}, "multipart/form-data")
    send("POST /predict", {"image": png}, "multipart/form-data")
    send("POST /predict_batch", {"images": [png, png]}, "multipart/form-data")
    send("POST /history", {"image_id": ids[0]})
    send("POST /expand", {"image_ids": ids[:2], "k": 3})
    send("POST /trace", {"image_ids": ids[:2], "k": 2})
    send("POST /confusion", {"label": labels[0], "predicted": labels[-1], "split": "test"})
    send("POST /evaluate", {"split": "train"})
    send("POST /suspects", {"k": 5})
    send("POST /images", {"split": "test", "label": labels[0], "limit": 3})
    relabel = {"image_ids": ids[:1], "label": other}
    event_id = post(f"{contract.url}/relabel", json=relabel, headers=headers, timeout=30).json()["event_id"]
    send("POST /relabel", {**relabel, "reason": "again: nothing changes, event_id is null"})
    send("POST /undo", {"event_id": event_id})
    send("POST /undo", {"event_id": event_id})  # undone already: 409
    send("POST /confirm", {"image_ids": ids[1:3], "reason": "looked at it"})
    send("POST /history", {"limit": 5})
    models = post(f"{contract.url}/models", json={}, timeout=30).json()
    send("POST /promote", {"version": models[-1]["version"], "reason": "contract test"})
    send("PUT /train/cancel", query={"task_id": "no-such-task"})
    send("GET /train/status", query={"task_id": "no-such-task"})
    send("GET /train/get", query={"task_id": "no-such-task"})


def test_every_answer_matches_the_openapi_document(trained_demo: TrainedDemo, tmp_path: Path) -> None:
    from schemathesis import GenerationMode

    data_dir = copy_demo_data(trained_demo, tmp_path / "data")
    env = {
        "BOUNCER_DATA_DIR": str(data_dir),
        "BOUNCER_MLFLOW_DIR": str(tmp_path / "mlruns"),
        "BOUNCER_API_TOKEN": TOKEN,
    }
    started = time.monotonic()
    with running_server(trained_demo, tmp_path, **env) as url:
        schema = schemathesis.openapi.from_url(f"{url}/docs.json", timeout=30)
        schema.validate()  # a valid OpenAPI 3.0 document (BentoML's own has null and file types)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        contract = Contract(url)
        writes = []
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.label in SKIPPED:
                continue
            if operation.definition.raw.get("security"):
                writes.append(operation)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                contract.fuzz(operation, mode, auth)
        known_good(contract, schema, auth)
        denied = {op.label: contract.check(op.Case(), "no token") for op in writes}
    elapsed = time.monotonic() - started
    print(f"\n{contract.summary()}\n{elapsed:.0f} s with the server's start")
    assert not contract.failures, f"{len(contract.failures)} operations answered against their document (see stdout)"
    assert writes and set(denied.values()) == {401}, denied
