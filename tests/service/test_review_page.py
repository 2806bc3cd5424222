"""The review page in a real Chromium against a real `bentoml serve`: review, undo, confirm, evaluate, train.

Debian's chromium (``apt-get install chromium``) driven by Playwright; nothing downloads a
browser. Screenshots of every page go to ``test-artifacts/ui/`` (git-ignored).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser import chromium
from tests.conftest import TrainedDemo, eventually
from tests.service.conftest import Deployment

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
ARTIFACTS = PROJECT / "test-artifacts" / "ui"
TOKEN = "page-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def site(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(trained_demo, tmp_path_factory.mktemp("page-server"), token=TOKEN, BOUNCER_LOG_IMAGES="all")
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: object, site: Deployment, request: pytest.FixtureRequest) -> Iterator[object]:
    # tall enough for a grid of more than 100 thumbnails (11 rows of 10), whose first paint is measured
    viewport = {"width": 1900, "height": 2600} if "queue" in request.node.name else {"width": 1400, "height": 950}
    page = browser.new_page(viewport=viewport)  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shoot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))  # type: ignore[attr-defined]


def post(site: Deployment, endpoint: str, payload: dict, **kwargs: object) -> object:
    response = httpx.post(f"{site.url}/{endpoint}", json=payload, timeout=60, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def give_token(page: object) -> None:
    """What a reviewer does once: the page asks for the token on the first write (a 401)."""
    dialog = page.locator("#token-dialog")  # type: ignore[attr-defined]
    dialog.wait_for(state="visible")
    page.fill("#token-input", TOKEN)  # type: ignore[attr-defined]
    page.click("#token-dialog button[value=save]")  # type: ignore[attr-defined]


def test_review_queue_relabel_undo_confirm(page: object, site: Deployment) -> None:
    before = {i["path"]: i["label"] for i in post(site, "images", {"split": "train", "limit": 10_000})}
    page.goto(f"{site.url}/ui/")  # type: ignore[attr-defined]
    page.wait_for_function("window.bouncerTimings && window.bouncerTimings.firstGrid !== undefined")  # type: ignore[attr-defined]
    timings = page.evaluate("window.bouncerTimings")  # type: ignore[attr-defined]
    print(  # measured, not asserted (a timing); `pytest -s` or -rP shows it, benchmarks/review_page.py measures more
        f"\nfirst paint of the suspects grid: {timings['sinceNavigation']:.0f} ms after opening the page "
        f"({timings['firstGrid']:.0f} ms after the queue started) for {timings['shown']} thumbnails"
    )
    cards = page.locator(".card")  # type: ignore[attr-defined]
    assert timings["shown"] >= 100 and cards.count() >= 100
    assert timings["decoded"] == timings["shown"], "first paint counted thumbnails that never loaded"
    page.set_viewport_size({"width": 1400, "height": 950})  # type: ignore[attr-defined]
    shoot(page, "review-queue")

    # select three: click, then shift-click two further on
    ids = [cards.nth(i).get_attribute("title") for i in range(3)]  # paths
    cards.nth(0).click()
    cards.nth(2).click(modifiers=["Shift"])
    assert page.locator(".card.selected").count() == 3  # type: ignore[attr-defined]
    target = page.locator("#relabel-label option").nth(1).inner_text()  # type: ignore[attr-defined]
    page.select_option("#relabel-label", target)  # type: ignore[attr-defined]
    page.fill("#reason", "browser test")  # type: ignore[attr-defined]
    page.click("#relabel")  # type: ignore[attr-defined]
    give_token(page)  # the first write was refused (401) and the selection kept
    assert page.locator(".card.selected").count() == 3  # type: ignore[attr-defined]
    page.dblclick("#relabel")  # type: ignore[attr-defined]  # a double click must not relabel twice
    page.locator(".message.success").first.wait_for()  # type: ignore[attr-defined]

    events = post(site, "history", {"limit": 5})
    relabels = [e for e in events if e["kind"] == "relabel" and e["reason"] == "browser test"]
    assert len(relabels) == 1, events  # one event, whatever the clicks
    changed = relabels[0]["changes"]
    assert {c["new_label"] for c in changed} == {target} and len(changed) <= 3
    images = {i["path"]: i for i in post(site, "images", {"split": "train", "limit": 10_000})}
    assert all(images[path]["label"] == target for path in ids)
    assert not set(ids) & {c.get_attribute("title") for c in cards.all()}  # they left the queue

    # undo from the image page of one the relabel changed (one already labelled so has no event to undo)
    image_id = changed[0]["image_id"]
    assert image_id in {images[path]["image_id"] for path in ids}
    page.goto(f"{site.url}/ui/#/image/{image_id}")  # type: ignore[attr-defined]
    page.locator("#history button", has_text="Undo").first.wait_for()  # type: ignore[attr-defined]
    page.locator("#neighbours a").first.wait_for()  # type: ignore[attr-defined]
    page.locator("#prediction .bars").wait_for()  # type: ignore[attr-defined]
    shoot(page, "image-page")
    page.locator("#history button", has_text="Undo").first.click()  # type: ignore[attr-defined]
    page.locator(".message.success", has_text="Undone").wait_for()  # type: ignore[attr-defined]
    restored = {i["path"]: i["label"] for i in post(site, "images", {"split": "train", "limit": 10_000})}
    assert [restored[path] for path in ids] == [before[path] for path in ids]  # the whole event was undone

    # confirm two as correct: they leave the queue and the history says so
    page.goto(f"{site.url}/ui/#/review")  # type: ignore[attr-defined]
    page.locator(".card").nth(1).wait_for()  # type: ignore[attr-defined]
    confirmed = [page.locator(".card").nth(i).get_attribute("title") for i in range(2)]  # type: ignore[attr-defined]
    page.locator(".card").nth(0).click()  # type: ignore[attr-defined]
    page.locator(".card").nth(1).click()  # type: ignore[attr-defined]
    page.click("#confirm")  # type: ignore[attr-defined]
    page.locator(".message.success", has_text="Confirmed").wait_for()  # type: ignore[attr-defined]
    shown = {c.get_attribute("title") for c in page.locator(".card").all()}  # type: ignore[attr-defined]
    assert not set(confirmed) & shown
    reloaded = post(site, "suspects", {"k": 100_000})
    assert not set(confirmed) & {s["path"] for s in reloaded}  # the server agrees: reviewed
    # 3 relabelled (then undone: no label changed in the end) + 2 confirmed
    assert page.inner_text("#counter") == "5 decisions · 0 labels changed"  # type: ignore[attr-defined]


def test_a_deep_queue_opens_at_any_position(page: object, site: Deployment) -> None:
    ranking = post(site, "suspects", {"k": 100_000})
    page.goto(f"{site.url}/ui/#/review/suspects")  # type: ignore[attr-defined]
    page.locator(".card").first.wait_for()  # type: ignore[attr-defined]
    assert page.inner_text("#selection-count").endswith(f" of {len(ranking):,}")  # type: ignore[attr-defined]
    page.fill("#start", "51")  # type: ignore[attr-defined]
    page.press("#start", "Enter")  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "path => document.querySelector('.card')?.title === path", arg=ranking[50]["path"]
    )
    shown = [c.get_attribute("title") for c in page.locator(".card").all()[:5]]  # type: ignore[attr-defined]
    assert shown == [s["path"] for s in ranking[50:55]]
    assert page.inner_text("#selection-count").startswith("0 selected · #51–")  # type: ignore[attr-defined]
    # each suspect shows its evidence: the two agreements under the thumbnail, the reasons on hover
    first = page.locator(".card .caption span[title]").first  # type: ignore[attr-defined]
    test_share = ranking[50]["test_neighbour_agreement"]
    assert f"test {math.floor(100 * test_share + 0.5)}%" in first.inner_text() and " · nn " in first.inner_text()
    assert first.get_attribute("title") == "\n".join(ranking[50]["reasons"])


def test_confusion_matrix_cell_shows_its_images(page: object, site: Deployment) -> None:
    page.goto(f"{site.url}/ui/#/evaluation")  # type: ignore[attr-defined]
    page.locator("td.cell").first.wait_for()  # type: ignore[attr-defined]
    evaluation = post(site, "evaluate", {"split": "test"})
    labels, matrix = evaluation["confusion_matrix"]["labels"], evaluation["confusion_matrix"]["matrix"]
    i, j = next((i, j) for i, row in enumerate(matrix) for j, n in enumerate(row) if i != j and n)
    page.locator(f'td.cell[data-true="{labels[i]}"][data-predicted="{labels[j]}"]').click()  # type: ignore[attr-defined]
    page.locator("#cell-images a").first.wait_for()  # type: ignore[attr-defined]
    assert page.locator("#cell-images a").count() == matrix[i][j]  # type: ignore[attr-defined]
    shoot(page, "evaluation")


def test_models_page_trains_with_the_token_and_shows_progress(page: object, site: Deployment) -> None:
    page.goto(f"{site.url}/ui/#/models")  # type: ignore[attr-defined]
    page.locator("#versions table").wait_for()  # type: ignore[attr-defined]
    versions_before = page.locator("#versions tbody tr").count()  # type: ignore[attr-defined]
    # versions exist (trained by `bouncer train`): the page must not say no training ever ran
    page.locator("#no-task").wait_for()  # type: ignore[attr-defined]
    assert "No training has run yet" not in page.inner_text("#view")  # type: ignore[attr-defined]
    page.click("#token-button")  # type: ignore[attr-defined]
    give_token(page)
    page.locator("#token-button", has_text="Token ✓").wait_for()  # type: ignore[attr-defined]
    page.fill("#epochs", "2")  # type: ignore[attr-defined]
    page.check("#force")  # type: ignore[attr-defined]
    page.click("#train")  # type: ignore[attr-defined]
    page.locator("#progress", has_text="running").wait_for(timeout=60_000)  # type: ignore[attr-defined]
    page.locator("#progress svg.chart").wait_for(timeout=180_000)  # type: ignore[attr-defined]  # two epochs drawn
    shoot(page, "models-training")
    page.locator("#progress", has_text="succeeded").wait_for(timeout=300_000)  # type: ignore[attr-defined]
    shown = page.inner_text("#progress")  # type: ignore[attr-defined]
    assert shown.count("promoted (forced)") == 1, shown  # the result's message once, not also in the status line
    assert "No training" not in shown
    # the chart has axes and its legend beside it, in one figure
    assert page.locator("#progress figure.chart-figure svg.chart #accuracy-axis text").count() >= 3  # type: ignore[attr-defined]
    assert page.locator("#progress figure.chart-figure svg.chart #epoch-axis text").count() >= 2  # type: ignore[attr-defined]
    assert page.locator("#progress figure.chart-figure .legend").count() == 1  # type: ignore[attr-defined]
    page.wait_for_function(f"document.querySelectorAll('#versions tbody tr').length > {versions_before}")  # type: ignore[attr-defined]
    shoot(page, "models")
    status = post(site, "train_progress", {})
    assert status["state"] == "succeeded" and status["result"]["promoted"]  # type: ignore[index]
    serving = [v for v in post(site, "models", {}) if v["serving"]]  # type: ignore[union-attr]
    assert serving[0]["version"] == status["result"]["model_version"]  # type: ignore[index]


def test_drift_page_shows_the_trend_and_pulls_logged_images_into_the_queue(page: object, site: Deployment) -> None:
    pictures = sorted((site.data_dir / "test").glob("*/*.png"))[:12]
    for picture in pictures:
        answer = httpx.post(f"{site.url}/predict", files={"image": (picture.name, picture.read_bytes())}, timeout=30)
        assert answer.status_code == 200, answer.text

    def logged() -> int:  # each worker writes its log every BOUNCER_PREDICTION_LOG_FLUSH_MS
        return post(site, "drift", {"window": "24h", "windows": 1})["windows"][0]["n"]  # type: ignore[index]

    assert eventually(lambda: logged() >= len(pictures), timeout=10)
    page.goto(f"{site.url}/ui/#/drift")  # type: ignore[attr-defined]
    page.locator("#drift-verdict").wait_for()  # type: ignore[attr-defined]
    assert page.locator("#drift-chart polyline").count() >= 2  # type: ignore[attr-defined]  # the trend
    assert page.locator("#drift-windows tbody tr").count() == 14  # type: ignore[attr-defined]  # 24h windows
    newest = int(page.locator("#drift-windows tbody tr").first.locator("td").nth(1).inner_text())  # type: ignore[attr-defined]
    assert newest >= len(pictures)  # every prediction of this test is in the newest window
    assert "Kolmogorov-Smirnov" in page.inner_text("#view")  # type: ignore[attr-defined]  # methods named
    if newest < 30:  # too few for a verdict: said in words (it was a bare red "12 < 30")
        text = page.inner_text("#view")  # type: ignore[attr-defined]
        assert "at least 30 are needed for a verdict" in text and not re.search(r"\b\d+ < \d+\b", text)
    shoot(page, "drift")

    page.click("#token-button")  # type: ignore[attr-defined]
    give_token(page)
    page.check("#import-all")  # type: ignore[attr-defined]
    page.click("#import-ood")  # type: ignore[attr-defined]
    page.wait_for_url("**/ui/#/review/imported")  # type: ignore[attr-defined]
    page.locator(".card").nth(len(pictures) - 1).wait_for()  # type: ignore[attr-defined]
    shown = [c.get_attribute("title") for c in page.locator(".card").all()]  # type: ignore[attr-defined]
    assert len(shown) >= len(pictures) and all("/logged-" in str(path) for path in shown)
    shoot(page, "review-imported")
    train = {i["path"] for i in post(site, "images", {"split": "train", "limit": 10_000})}  # type: ignore[union-attr]
    assert set(shown) <= train  # in the dataset now, to relabel or confirm


def selected(page: object) -> list[str]:
    """The paths of the cards selected in the review queue."""
    return [c.get_attribute("title") for c in page.locator(".card.selected").all()]  # type: ignore[attr-defined]


def test_a_failed_undo_or_write_is_shown_and_the_selection_kept(page: object, site: Deployment) -> None:
    """A 409 on undo (a later relabel changed the image) and a network error: told, nothing written, selection kept."""
    page.goto(f"{site.url}/ui/#/review/images")  # type: ignore[attr-defined]
    page.click("#token-button")  # type: ignore[attr-defined]
    give_token(page)
    page.locator("#token-button", has_text="Token ✓").wait_for()  # type: ignore[attr-defined]
    cards = page.locator(".card")  # type: ignore[attr-defined]
    cards.nth(3).wait_for()
    images = {i["path"]: i for i in post(site, "images", {"split": "train", "limit": 10_000})}  # type: ignore[union-attr]
    first = images[cards.nth(0).get_attribute("title")]
    classes = [o.inner_text() for o in page.locator("#relabel-label option").all()]  # type: ignore[attr-defined]
    target, later_label = [c for c in classes if c != first["label"]][:2]
    written: list[int] = []  # events to undo afterwards, newest last
    try:
        # relabel one image on the page, then again through the API: the page's undo must now be refused
        cards.nth(0).click()
        page.select_option("#relabel-label", target)  # type: ignore[attr-defined]
        page.fill("#reason", "page, then the API")  # type: ignore[attr-defined]
        page.click("#relabel")  # type: ignore[attr-defined]
        toast = page.locator(".message.success", has_text=f"Relabelled 1 as {target}")  # type: ignore[attr-defined]
        toast.wait_for()
        ours = post(site, "history", {"image_id": first["image_id"], "limit": 1})[0]  # type: ignore[index]
        assert ours["reason"] == "page, then the API" and ours["changes"][0]["new_label"] == target
        written.append(ours["event_id"])
        later = post(site, "relabel", {"image_ids": [first["image_id"]], "label": later_label}, headers=AUTH)
        written.append(later["event_id"])  # type: ignore[index]
        cards.nth(0).click()  # the reviewer has moved on to two other images
        cards.nth(1).click()
        chosen = selected(page)
        assert len(chosen) == 2 and first["path"] not in chosen
        events_before = post(site, "history", {"limit": 50})
        toast.locator("button", has_text="Undo").click()
        conflict = page.locator(".message.error", has_text=f"cannot undo event {ours['event_id']}")  # type: ignore[attr-defined]
        conflict.wait_for()
        assert "later event" in conflict.inner_text()
        shoot(page, "undo-conflict")
        assert post(site, "history", {"limit": 50}) == events_before  # nothing written
        assert selected(page) == chosen
        assert page.inner_text("#selection-count").startswith("2 selected")  # type: ignore[attr-defined]

        # the server unreachable for one request: the relabel of the selection fails, and is kept to retry
        labels = {images[path]["label"] for path in chosen}
        retry_label = next(c for c in classes if c not in labels)
        page.route("**/relabel", lambda route: route.abort("connectionrefused"), times=1)  # type: ignore[attr-defined]
        page.select_option("#relabel-label", retry_label)  # type: ignore[attr-defined]
        page.fill("#reason", "after a network error")  # type: ignore[attr-defined]
        page.click("#relabel")  # type: ignore[attr-defined]
        page.locator(".message.error", has_text="network error").wait_for()  # type: ignore[attr-defined]
        shoot(page, "network-error")
        assert post(site, "history", {"limit": 50}) == events_before
        assert selected(page) == chosen
        page.click("#relabel")  # type: ignore[attr-defined]  # the server is back: the same selection goes through
        page.locator(".message.success", has_text=f"Relabelled 2 as {retry_label}").wait_for()  # type: ignore[attr-defined]
        retried = post(site, "history", {"limit": 1})[0]  # type: ignore[index]
        written.append(retried["event_id"])
        assert retried["reason"] == "after a network error"
        assert {c["image_id"] for c in retried["changes"]} == {images[path]["image_id"] for path in chosen}
    finally:
        for event_id in reversed(written):  # as they were, for any test after this one
            httpx.post(f"{site.url}/undo", json={"event_id": event_id}, headers=AUTH, timeout=60)


def test_a_suggestion_is_shown_only_when_it_is_another_class(page: object, site: Deployment) -> None:
    """On a dataset whose suggestion equals the label, every card showed a red 'person → person'."""
    page.goto(f"{site.url}/ui/#/review/suspects")  # type: ignore[attr-defined]
    page.locator(".card").first.wait_for()  # type: ignore[attr-defined]
    cards = page.evaluate(  # type: ignore[attr-defined]
        """[...document.querySelectorAll('.card')].map((card) => ({
            path: card.title, label: card.querySelector('.label').textContent,
            arrow: card.querySelector('.arrow')?.textContent ?? null}))"""
    )
    ranking = {s["path"]: s for s in post(site, "suspects", {"k": 100_000})}  # type: ignore[union-attr]
    for card in cards:
        suspect = ranking[card["path"]]
        differs = suspect["suggested_label"] != suspect["label"]
        assert (card["arrow"] == f"→ {suspect['suggested_label']}") if differs else card["arrow"] is None, card


def test_the_api_page_says_whose_it_is(page: object, site: Deployment) -> None:
    """The OpenAPI page had no visible title and the tab said 'BentoML Prediction Service'."""
    page.goto(f"{site.url}/")  # type: ignore[attr-defined]
    page.locator(".swagger-ui .info .title").wait_for()  # type: ignore[attr-defined]  # the spec was loaded
    assert page.title() == "Bouncer API"  # type: ignore[attr-defined]
    assert page.locator("h1", has_text="Bouncer API").is_visible()  # type: ignore[attr-defined]
    assert page.locator(".swagger-ui .info .title", has_text="Bouncer").is_visible()  # type: ignore[attr-defined]
    assert page.locator(".opblock-summary-path", has_text="/relabel").count() >= 1  # type: ignore[attr-defined]
    assert page.locator("a[href='./ui/']").count() == 1  # type: ignore[attr-defined]
    shoot(page, "api-page")


def test_a_phone_sized_window_keeps_the_navigation_on_screen(browser: object, site: Deployment) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})  # type: ignore[attr-defined]
    try:
        page.goto(f"{site.url}/ui/#/models")
        page.locator("#versions table").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing runs off the side
        for link in page.locator("header nav a").all():
            box = link.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, link.inner_text()
        shoot(page, "phone-models")
    finally:
        page.close()
