"""Tests for the Gradio Space (space/app.py): every API endpoint through `gradio_client`, bad inputs, concurrency
and the start-up while the model is still being built. The app runs in-process on a tiny checkpoint."""

import importlib.util
import os
import random
import shutil
import socket
import struct
import sys
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from PIL import Image
from sigma_testing_utils import REPO_ROOT

from modeling_sigma.modeling.identifier_layout import SigmaIdentifierLayout
from modeling_sigma.training.backbone import build_sigma_model

gradio_client = pytest.importorskip("gradio_client")
SPACE_DIR = REPO_ROOT / "space"
LAYOUT = SigmaIdentifierLayout(k1=4, k2=2, k3=2, k4=2, num_subspaces=1, suffix_size=8)
QUERY = "a small red circle at the left on a gray background"


def load_app():
    """space/app.py as a module (it is a script folder, not a package)."""
    if "sigma_space_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("sigma_space_app", SPACE_DIR / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["sigma_space_app"] = module
        spec.loader.exec_module(module)
    return sys.modules["sigma_space_app"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(app, tmp_dir, **kwargs):
    """Launch `app.build_demo(**kwargs)` on a free port; returns (demo, client)."""
    demo = app.build_demo(**kwargs)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    return demo, gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_dir))


@pytest.fixture(scope="module", autouse=True)
def quiet_environment(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    yield
    torch.set_num_threads(threads)
    if previous is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous


def build_space_model(corpus, train_steps: int = 0):
    """A tiny SIGMA model whose index holds the test images of `corpus` (random identifiers).

    With `train_steps`, a few seconds of stages 2 and 3 on those images teach it to describe identifiers and to
    find images by their captions (for pages meant to be looked at).
    """
    torch.manual_seed(0)
    test = corpus["test"]
    generator = torch.Generator().manual_seed(0)
    prefixes = [torch.randint(0, size, (len(test),), generator=generator) for size in LAYOUT.sizes[:-1]]
    suffixes = torch.arange(len(test)) % LAYOUT.suffix_size
    codes = torch.stack([*prefixes, suffixes], dim=1)  # (images, length)
    captions = [caption for captions in corpus["train"]["captions"] for caption in captions]
    model, processor = build_sigma_model(
        "embedded", LAYOUT, codes, list(test["image_id"]), captions, similarity_hidden_size=32,
        hidden_size=64, num_layers=2, num_heads=4, vision_hidden_size=32, vision_depth=2,
    )  # fmt: skip
    model.config.num_beams = 4
    if train_steps:
        train_briefly(model, processor, test, train_steps)
    return model.eval()


def train_briefly(model, processor, split, steps: int) -> None:
    from modeling_sigma.training.collator import SigmaCollator

    identifiers = model.index.identifiers()
    examples = [
        {"task": "comprehend", "identifier": identifiers[image_id], "answer": captions[0]}
        for image_id, captions in zip(split["image_id"], split["captions"])
    ]
    examples += [
        {"task": "align", "query": caption, "answer": identifiers[image_id]}
        for image_id, captions in zip(split["image_id"], split["captions"])
        for caption in captions
    ]
    collator, rng = SigmaCollator(processor, model.config, max_length=128), random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(**collator(rng.sample(examples, 16))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_corpus):
    path = tmp_path_factory.mktemp("space") / "model"
    build_space_model(tiny_corpus).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def served(checkpoint, tiny_corpus, tmp_path_factory):
    app = load_app()
    demo, client = launch(
        app, tmp_path_factory.mktemp("downloads"), model_path=checkpoint, corpus=tiny_corpus
    )
    space = demo.sigma_space
    assert space.wait_until_ready(60), space.status_markdown()
    yield demo, client, space
    client.close()
    demo.close()


@pytest.fixture
def images(tmp_path, tiny_corpus):
    """Image files to upload: two unseen TinyShapes images, a text file, and a file named .png that is not one."""
    paths = {}
    for i, image in enumerate(tiny_corpus["unseen"]["image"][:2]):
        paths[f"unseen{i}"] = tmp_path / f"unseen{i}.png"
        image.save(paths[f"unseen{i}"])
    paths["text"] = tmp_path / "notes.txt"
    paths["text"].write_text("not an image\n")
    paths["fake_png"] = tmp_path / "fake.png"
    paths["fake_png"].write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    return paths


def snapshot(space):
    return space.index.image_ids, space.index.codes.clone(), space.model.index.image_ids


def assert_unchanged(space, before):
    image_ids, codes, model_ids = before
    assert space.index.image_ids == image_ids and torch.equal(space.index.codes, codes)
    assert space.model.index.image_ids == model_ids


def call(client, *args, api_name):
    return client.predict(*args, api_name=api_name)


def app_error(client, *args, api_name, match):
    with pytest.raises(gradio_client.exceptions.AppError, match=match):
        client.predict(*args, api_name=api_name)


# ------------------------------------------------------------------------------------------------ endpoints
def test_every_endpoint_is_named(served):
    _, client, _ = served
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/search", "/decode", "/add", "/identifiers", "/status"} <= set(endpoints)


def test_status_and_page(served):
    demo, client, space = served
    assert call(client, api_name="/status")["state"] == "ready"
    assert "Ready" in space.status_markdown() and "16 images indexed" in space.status_markdown()
    page = httpx.get(client.src, timeout=30)
    assert page.status_code == 200 and "SIGMA generative text-to-image retrieval" in page.text


def test_search_returns_gallery_and_hits(served, tiny_corpus):
    _, client, space = served
    gallery, hits, note = call(client, QUERY, 3, api_name="/search")
    assert len(gallery) == len(hits) == 3 and "3 images" in note
    test_ids = set(tiny_corpus["test"]["image_id"])
    for rank, (item, hit) in enumerate(zip(gallery, hits), start=1):
        assert hit["rank"] == rank and hit["image_id"] in test_ids
        assert {"identifier", "score", "similarity", "metadata"} <= set(hit)
        for part in (hit["image_id"], hit["identifier"], "beam", "similarity"):
            assert part in item["caption"]
        with Image.open(item["image"]) as image:  # the corpus image, enlarged for display
            assert image.size == (128, 128)


def test_identifiers_and_decode(served):
    _, client, space = served
    rows = call(client, 5, api_name="/identifiers")
    assert len(rows) == 5 and all(
        space.index.identifier(row["image_id"]) == row["identifier"] for row in rows
    )
    caption, image, note = call(client, rows[0]["identifier"], api_name="/decode")
    assert isinstance(caption, str) and rows[0]["image_id"] in note and Path(image).is_file()
    by_image_id = call(client, rows[0]["image_id"], api_name="/decode")
    assert by_image_id[0] == caption  # an image id picks its identifier


def test_decode_bad_identifiers(served):
    _, client, space = served
    before = snapshot(space)
    app_error(client, "", api_name="/decode", match="Pick an identifier")
    app_error(
        client, "a red circle", api_name="/decode", match="neither an identifier nor an indexed image id"
    )
    indexed = {tuple(row) for row in space.index.codes.tolist()}
    free = next(
        [a, b, 0, 0, 7] for a in range(4) for b in range(2) if (a, b, 0, 0, 7) not in indexed
    )  # well formed, not indexed
    app_error(client, LAYOUT.codes_to_string(free), api_name="/decode", match="no indexed image has it")
    assert_unchanged(space, before)


def test_add_is_searchable_and_updates_the_picker(served, images):
    _, client, space = served
    size = len(space.index)
    identifier, note, picker = call(
        client, gradio_client.handle_file(str(images["unseen0"])), "my-photo", api_name="/add"
    )
    assert identifier.startswith("<id1_") and "my-photo" in note and "searchable now" in note
    assert picker["value"] == identifier and picker["choices"][0] == [f"my-photo — {identifier}", identifier]
    assert len(space.index) == size + 1 and space.model.identifier_to_image_id(identifier) == "my-photo"
    assert call(client, 1, api_name="/identifiers")[0] == {"image_id": "my-photo", "identifier": identifier}
    _, hits, _ = call(client, QUERY, len(space.index), api_name="/search")  # every indexed image, at once
    assert "my-photo" in {hit["image_id"] for hit in hits}
    caption, image, _ = call(client, "my-photo", api_name="/decode")
    assert isinstance(caption, str) and Image.open(image).size == (128, 128)  # the upload is shown

    before = snapshot(space)
    app_error(
        client, gradio_client.handle_file(str(images["unseen1"])), "my-photo", api_name="/add",
        match="'my-photo' is already in the index",
    )  # fmt: skip
    assert_unchanged(space, before)
    identifier, note, _ = call(client, gradio_client.handle_file(str(images["unseen1"])), "", api_name="/add")
    assert "upload-" in note  # an id is made up when none is given


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("query", ["", "   \n "])
def test_empty_query(served, query):
    _, client, _ = served
    app_error(client, query, 5, api_name="/search", match="the query is empty")


def test_ten_thousand_character_query_is_shortened(served):
    _, client, space = served
    query = ("a small red circle at the left " * 400)[:10_000]
    gallery, hits, note = call(client, query, 2, api_name="/search")
    assert len(hits) == 2 and "The query has 10,000 characters" in note
    assert f"at most {space.model.config.max_query_length} prompt tokens" in note
    shortened, notice = space.fit_query(query)
    assert notice in note and query.startswith(shortened) and len(shortened) < 2_000
    assert space.fit_query("a red circle") == ("a red circle", None)


@pytest.mark.parametrize(
    ("k", "match"), [(0, "less than minimum value 1"), (21, "greater than maximum value 20")]
)
def test_k_out_of_range(served, k, match):
    _, client, _ = served
    app_error(client, QUERY, k, api_name="/search", match=match)


@pytest.mark.parametrize(
    ("name", "match"), [("text", "not an image PIL can read"), ("fake_png", "not an image PIL can read")]
)
def test_non_image_upload(served, images, name, match):
    _, client, space = served
    before = snapshot(space)
    app_error(client, gradio_client.handle_file(str(images[name])), "junk", api_name="/add", match=match)
    assert_unchanged(space, before)


def test_missing_upload(served):
    _, client, space = served
    before = snapshot(space)
    app_error(client, None, "nothing", api_name="/add", match="Upload an image first")
    assert_unchanged(space, before)


def test_twenty_megapixel_upload_is_downscaled(served, tmp_path):
    _, client, space = served
    path = tmp_path / "big.png"
    Image.new("RGB", (5000, 4000), (40, 80, 220)).save(path, compress_level=1)
    identifier, note, _ = call(client, gradio_client.handle_file(str(path)), "big-photo", api_name="/add")
    assert "Downscaled from 5000×4000 (20.0 MP)" in note
    assert space.model.identifier_to_image_id(identifier) == "big-photo"
    assert max(space.uploads["big-photo"].size) <= 1200


def test_oversized_upload_is_rejected_before_decoding(served, tmp_path):
    """A small PNG whose header claims 12000×9000 pixels: refused by its size, nothing decoded."""
    _, client, space = served
    path = tmp_path / "bomb.png"
    Image.new("RGB", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    header = b"IHDR" + struct.pack(">II", 12000, 9000) + bytes(data[24:29])
    data[12:33] = header + struct.pack(">I", zlib.crc32(header))
    path.write_bytes(bytes(data))
    before = snapshot(space)
    app_error(
        client, gradio_client.handle_file(str(path)), "bomb", api_name="/add",
        match=r"12000×9000 \(108.0 MP\); the limit is 50 MP",
    )  # fmt: skip
    assert_unchanged(space, before)


def test_concurrent_searches_and_an_add(served, images):
    _, client, space = served
    queries = [QUERY, "a large blue star", "two green squares", "a yellow cross at the top", QUERY, "black"]
    expected = {query: [hit["image_id"] for hit in space.search(query, 3)[0]] for query in set(queries)}
    jobs = [client.submit(query, 3, api_name="/search") for query in queries]
    add_job = client.submit(
        gradio_client.handle_file(str(images["unseen1"])), "during-search", api_name="/add"
    )
    for query, job in zip(queries, jobs):
        _, hits, _ = job.result(timeout=60)
        assert [hit["image_id"] for hit in hits] == expected[query] or "during-search" in {
            hit["image_id"] for hit in hits
        }
    add_job.result(timeout=60)
    assert "during-search" in space.index and len(space.index.image_ids) == len(set(space.index.image_ids))


# ------------------------------------------------------------------------------------------------ start-up
def test_a_separate_describe_model_decodes(checkpoint, tiny_corpus, tmp_path):
    """Decode runs on the describe checkpoint (the embedded default's stage 2), with the Space's index."""
    describer_path = tmp_path / "stage2"
    describer = build_space_model(tiny_corpus, train_steps=10)
    describer.save_pretrained(describer_path)
    app = load_app()
    demo, client = launch(app, tmp_path, model_path=checkpoint, corpus=tiny_corpus,
                          describe_model_path=describer_path)  # fmt: skip
    try:
        space = demo.sigma_space
        assert space.wait_until_ready(60), space.status_markdown()
        assert space.describer is not space.model
        image_id = space.index.image_ids[0]
        caption, _, _ = call(client, image_id, api_name="/decode")
        assert caption == describer.describe([space.index.identifier(image_id)])[0]
    finally:
        client.close()
        demo.close()


def test_an_incompatible_describe_model_is_reported(checkpoint, tiny_corpus, tmp_path):
    from sigma_testing_utils import build_tiny_model

    other, *_ = build_tiny_model()  # another vocabulary: its identifier tokens differ
    other.save_pretrained(tmp_path / "other")
    app = load_app()
    demo = app.build_demo(model_path=checkpoint, corpus=tiny_corpus, describe_model_path=tmp_path / "other")
    space = demo.sigma_space
    assert not space.wait_until_ready(60)
    assert space.state == "failed" and "incompatible" in space.status_markdown()


def test_tabs_answer_while_the_model_is_building(checkpoint, tiny_corpus, tmp_path):
    release, target = threading.Event(), tmp_path / "built"

    def builder(progress):
        progress("=== step 1 of 4: stage0")
        progress("fitting the identifiers")
        assert release.wait(60)
        shutil.copytree(checkpoint, target)

    app = load_app()
    demo, client = launch(app, tmp_path, model_path=target, corpus=tiny_corpus, builder=builder)
    try:
        status = call(client, api_name="/status")
        assert status["state"] == "building" and status["progress"] == "fitting the identifiers"
        assert "step 1 of 4: stage0" in demo.sigma_space.status_markdown()
        app_error(client, QUERY, 3, api_name="/search", match="still building")
        app_error(client, "x", api_name="/decode", match="still building")
        assert call(client, 5, api_name="/identifiers") == []
        release.set()
        assert demo.sigma_space.wait_until_ready(60)
        assert len(call(client, QUERY, 2, api_name="/search")[1]) == 2
    finally:
        release.set()
        client.close()
        demo.close()


def test_a_failed_start_is_reported(tmp_path):
    app = load_app()
    demo, client = launch(app, tmp_path, model_path=tmp_path / "missing", corpus="none")
    try:
        assert not demo.sigma_space.wait_until_ready(60)
        assert call(client, api_name="/status")["state"] == "failed"
        app_error(client, QUERY, 3, api_name="/search", match="could not be loaded")
    finally:
        client.close()
        demo.close()


class FakeChild:
    """Stands in for the `subprocess.Popen` of the default build: prints two lines, then writes the model."""

    def __init__(self, command, target, **kwargs):
        self.command, self.target, self.returncode = command, target, 0
        self.stdout = iter(["=== step 1 of 4: stage0\n", "\n", "fitting\n"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.target.mkdir(parents=True)
        (self.target / "config.json").write_text("{}")
        (self.target / "model.safetensors").write_bytes(b"")


def test_default_build_waits_for_another_run_then_builds(tmp_path, monkeypatch):
    load_app()
    build_default = sys.modules["build_default"]
    target = tmp_path / "tiny-shapes" / "stage3"
    (tmp_path / "tiny-shapes" / "stage1").mkdir(parents=True)  # written just now: another run is busy
    children, naps = [], []
    monkeypatch.setattr(build_default, "DEFAULT_MODEL", target)
    monkeypatch.setattr(
        build_default,
        "subprocess",
        SimpleNamespace(
            PIPE=-1,
            STDOUT=-2,
            Popen=lambda command, **kw: children.append(command) or FakeChild(command, target),
        ),
    )

    def nap(seconds):  # the other run finishes while we wait
        naps.append(seconds)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(build_default, "time", SimpleNamespace(time=time.time, sleep=nap))
    lines = []
    build_default.build_embedded_default(lines.append)
    assert naps == [10] and children == [] and "another run is writing" in lines[0]

    shutil.rmtree(target)
    lines.clear()
    build_default.build_embedded_default(lines.append, idle_seconds=0)  # idle folder: build in a child
    assert lines == ["=== step 1 of 4: stage0", "fitting"] and build_default.is_complete_checkpoint(target)
    assert children[0][-2:] == [str(SPACE_DIR / "build_default.py"), "--exit-with-parent"]


def test_examples_come_from_sigma_examples_for_a_checkpoint_of_another_corpus(monkeypatch):
    app = load_app()
    monkeypatch.delenv("SIGMA_EXAMPLES", raising=False)
    assert app.example_queries() == app.EXAMPLE_QUERIES
    monkeypatch.setenv("SIGMA_EXAMPLES", "a night sky over a meadow | a red boat|")
    assert app.example_queries() == ["a night sky over a meadow", "a red boat"]
