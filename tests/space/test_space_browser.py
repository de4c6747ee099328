"""The Space in a real headless Chromium (Debian's /usr/bin/chromium driven by playwright): search, see the
gallery, decode a picked identifier, see the caption; a screenshot of both tabs goes to results/."""

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image
from sigma_testing_utils import REPO_ROOT
from test_space import build_space_model, launch, load_app, quiet_environment  # noqa: F401 (autouse fixture)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOT = REPO_ROOT / "results" / "space_screenshot.png"
TIMEOUT_MS = 30_000
SETTLED = """() => !document.querySelector('.pending')
    && [...document.querySelectorAll('img')].every(img => img.complete && img.naturalWidth > 0)"""


def require_browser():
    """Skip without Chromium or playwright, except on CI (env `CI`), where their absence is a failure."""
    missing = []
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright; no `playwright install` needed)")
    if missing:
        reason = f"the browser test needs {' and '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must provide them (.ci/run installs chromium)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory, tiny_corpus):
    require_browser()
    path = tmp_path_factory.mktemp("space-browser") / "model"
    build_space_model(tiny_corpus, train_steps=200).save_pretrained(path)
    demo, client = launch(
        load_app(), tmp_path_factory.mktemp("downloads"), model_path=path, corpus=tiny_corpus
    )
    assert demo.sigma_space.wait_until_ready(60), demo.sigma_space.status_markdown()
    yield client.src, demo.sigma_space
    client.close()
    demo.close()


@pytest.fixture
def page(page_url):
    from playwright.sync_api import sync_playwright

    host = urlparse(page_url[0]).netloc
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        # nothing leaves the machine: the theme's web fonts and anything else not served by the app are refused
        page.route(
            "**/*",
            lambda route: route.continue_() if urlparse(route.request.url).netloc == host else route.abort(),
        )
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def test_search_then_decode_in_the_browser(page, page_url, tiny_corpus, tmp_path):
    url, space = page_url
    query = tiny_corpus["test"]["captions"][0][0]
    page.goto(url)
    page.get_by_text("Ready", exact=False).first.wait_for()

    # ----- search: the gallery shows k images, captioned with id, identifier and scores
    page.get_by_label("Describe the image").fill(query)
    page.get_by_role("button", name="Search", exact=True).click()
    images = page.locator("#gallery img")
    page.wait_for_function("() => document.querySelectorAll('#gallery img').length >= 5")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#gallery img')].every(img => img.complete && img.naturalWidth > 0)"
    )
    expected = space.search(query, 5)[0]
    gallery_text = page.locator("#gallery").inner_text()
    assert images.count() == 5
    for hit in expected:
        assert hit["image_id"] in gallery_text
    screenshot(page, tmp_path / "search.png")

    # ----- decode: pick the top hit's identifier in the picker, decode it, read the caption
    top = expected[0]
    page.get_by_role("tab", name="Decode").click()
    picker = page.locator("#picker input")
    picker.click()
    picker.fill(top["image_id"])
    page.get_by_role("option", name=f"{top['image_id']} — {top['identifier']}").click()
    page.get_by_role("button", name="Decode", exact=True).click()
    caption = space.model.describe([top["identifier"]])[0]
    assert caption, "the briefly trained tiny model should write a caption"
    page.wait_for_function("text => document.querySelector('#caption textarea').value === text", arg=caption)
    page.get_by_text(f"is the identifier of {top['image_id']}", exact=False).wait_for()
    page.wait_for_function("() => document.querySelector('#decoded-image img')?.naturalWidth > 0")
    screenshot(page, tmp_path / "decode.png")

    # ----- one picture of both tabs, kept in results/ for the README and for people to look at
    combined = stack_vertically([tmp_path / "search.png", tmp_path / "decode.png"])
    combined.save(tmp_path / "space_screenshot.png")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "space_screenshot.png", SCREENSHOT)
    assert Image.open(SCREENSHOT).size == combined.size


def screenshot(page, path: Path) -> None:
    """A full-page screenshot once no output is pending and every image has loaded (outputs fade in)."""
    page.wait_for_function(SETTLED)
    page.wait_for_timeout(400)  # Gradio's 0.15 s opacity transition back from the pending state
    page.screenshot(path=str(path), full_page=True)


def stack_vertically(paths: list[Path]) -> Image.Image:
    shots = [Image.open(path).convert("RGB") for path in paths]
    canvas = Image.new("RGB", (max(s.width for s in shots), sum(s.height for s in shots) + 8), "white")
    top = 0
    for shot in shots:
        canvas.paste(shot, (0, top))
        top += shot.height + 8
    return canvas
