"""The README picture of the Space (docs/space.png): a search with the first example query, then the top hit's
identifier decoded, in a real headless Chromium (Debian's /usr/bin/chromium driven by playwright).

    python space/screenshot.py                       # the `make e2e` checkpoints of the embedded default
    python space/screenshot.py --model outputs/tiny-shapes/stage3 --describe-model outputs/tiny-shapes/stage2

It prints the hits it shows, so the picture can be checked against the query: nothing leaves the machine (the
page may only load what the app serves).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

SPACE_DIR = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
SETTLED = """() => !document.querySelector('.pending')
    && [...document.querySelectorAll('img')].every(img => img.complete && img.naturalWidth > 0)"""


def load_app():
    spec = importlib.util.spec_from_file_location("sigma_space_app", SPACE_DIR / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sigma_space_app"] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settle_and_shoot(page, path: Path) -> None:
    page.wait_for_function(SETTLED)
    page.wait_for_timeout(400)  # Gradio's opacity transition back from the pending state
    page.screenshot(path=str(path), full_page=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="outputs/tiny-shapes/stage3")
    parser.add_argument("--describe-model", default="outputs/tiny-shapes/stage2")
    parser.add_argument("--query", default=None, help="default: the Space's first example query")
    parser.add_argument("--output", default="docs/space.png")
    args = parser.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"{CHROMIUM} is needed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    app = load_app()
    query = args.query or app.example_queries()[0]
    demo = app.build_demo(model_path=args.model, describe_model_path=args.describe_model)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    space = demo.sigma_space
    if not space.wait_until_ready(300):
        raise SystemExit(space.status_markdown())
    hits = space.search(query, 5)[0]
    print(f"query: {query}")
    for hit in hits:
        print(f"  {hit['image_id']} {hit['identifier']}")
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        host = f"127.0.0.1:{port}"
        page.route("**/*", lambda r: r.continue_() if urlparse(r.request.url).netloc == host else r.abort())
        page.set_default_timeout(60_000)
        page.goto(f"http://{host}/")
        page.get_by_text("Ready", exact=False).first.wait_for()
        page.get_by_label("Describe the image").fill(query)
        page.get_by_role("button", name="Search", exact=True).click()
        page.wait_for_function("() => document.querySelectorAll('#gallery img').length >= 5")
        settle_and_shoot(page, Path(tmp) / "search.png")
        top = hits[0]
        page.get_by_role("tab", name="Decode").click()
        picker = page.locator("#picker input")
        picker.click()
        picker.fill(top["image_id"])
        picker.press("Enter")  # a typed image id is accepted (allow_custom_value)
        page.wait_for_timeout(500)
        page.get_by_role("button", name="Decode", exact=True).click()
        page.get_by_text(f"is the identifier of {top['image_id']}", exact=False).wait_for()
        settle_and_shoot(page, Path(tmp) / "decode.png")
        print(f"decoded {top['identifier']}: {page.locator('#caption textarea').input_value()}")
        browser.close()
        shots = [Image.open(Path(tmp) / name).convert("RGB") for name in ("search.png", "decode.png")]
        canvas = Image.new("RGB", (max(s.width for s in shots), sum(s.height for s in shots) + 8), "white")
        canvas.paste(shots[0], (0, 0))
        canvas.paste(shots[1], (0, shots[0].height + 8))
        canvas.save(args.output)
    print(f"wrote {args.output}")
    demo.close()


if __name__ == "__main__":
    main()
