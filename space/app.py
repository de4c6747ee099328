# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""SIGMA Space: search images by writing their identifiers, decode an identifier into a caption, add images.

    python space/app.py                                   # the embedded default (built on first start)
    SIGMA_MODEL=outputs/tiny-shapes/stage2 python space/app.py
    SIGMA_MODEL=you/sigma-flickr30k SIGMA_CORPUS=nlphuji/flickr30k python space/app.py

Every tab is also an API endpoint (`search`, `decode`, `add`, `identifiers`, `status`) for `gradio_client`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
from pathlib import Path

import gradio as gr

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent):  # sigma_space.py beside this file; modeling_sigma in a clone's root
    if str(folder) not in sys.path:
        sys.path.append(str(folder))

from sigma_space import (  # noqa: E402
    MAX_K,
    MAX_UPLOAD_BYTES,
    MAX_WAIT_SECONDS,
    PICKER_LIMIT,
    QUEUE_SIZE,
    SigmaSpace,
    SigmaSpaceError,
)

logger = logging.getLogger(__name__)

INTRO = """# SIGMA — generative text-to-image retrieval
The model reads a description and *writes* the identifier of the matching image, token by token, under a trie
of the indexed identifiers (Huang et al., Findings of ACL 2026). **Search** finds images, **Decode** asks the
model what an identifier means, **Add** indexes a new image without retraining."""
# Two TinyShapes test captions (never trained on) whose top hit among the 2,500 indexed images is their image in
# the `make e2e` model of 73c7076, the other hits sharing colours, shapes and background, and a partial query whose
# hits are red shapes on grass, four of five with a red circle (space/screenshot.py shows the first in docs/space.png)
EXAMPLE_QUERY = (
    "a large purple circle at the top and a large blue cross at the right and a small purple diamond at the left "
    "on a gray background"
)
EXAMPLE_QUERIES = [
    EXAMPLE_QUERY,
    "a small red cross at the right and a large red triangle at the bottom and a small black star at the top on a "
    "grass background",
    "a red circle on a grass background",
]  # TinyShapes; SIGMA_EXAMPLES: yours


def example_queries() -> list[str]:
    """The Search tab's examples: `SIGMA_EXAMPLES` (queries separated by `|`, for a checkpoint of your own
    corpus; `run_embedded.py --corpus` prints them) or the TinyShapes ones."""
    given = [query.strip() for query in os.environ.get("SIGMA_EXAMPLES", "").split("|") if query.strip()]
    return given or EXAMPLE_QUERIES


IDENTIFIER_PATTERN = re.compile(r"<id\d")


def user_errors(fn):
    """Turn the Space's errors into `gr.Error` messages on the page (and for API clients)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SigmaSpaceError as error:
            raise gr.Error(str(error), print_exception=False) from error
        except Exception as error:
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Something went wrong ({type(error).__name__}: {error}).") from error

    return wrapper


def picker_update(space: SigmaSpace, value=None) -> dict:
    try:
        rows = space.identifiers()
    except SigmaSpaceError:  # busy: keep the choices the page has
        return gr.Dropdown() if value is None else gr.Dropdown(value=value)
    choices = [(f"{row['image_id']} — {row['identifier']}", row["identifier"]) for row in rows]
    if value is None:
        return gr.Dropdown(choices=choices)
    return gr.Dropdown(choices=choices, value=value)


def build_demo(
    model_path=None,
    corpus=None,
    builder=None,
    describe_model_path=None,
    queue_size: int = QUEUE_SIZE,
    max_wait: float = MAX_WAIT_SECONDS,
) -> gr.Blocks:
    """The Space's Blocks; the model loads (or the default is built) in the background meanwhile.

    Args:
        model_path: checkpoint folder or Hub repo id; defaults to `SIGMA_MODEL`, then the embedded default.
        corpus: where gallery images come from (`load_corpus` name/folder/Hub id or a `DatasetDict`);
            defaults to `SIGMA_CORPUS`, then TinyShapes for local checkpoints.
        builder: called with a progress callback to write a missing checkpoint (default: the embedded build,
            for the default path only).
        describe_model_path: the checkpoint that decodes identifiers (`SIGMA_DESCRIBE_MODEL`; the embedded
            default uses its stage-2 checkpoint, others the model itself).
        queue_size: requests Gradio's queue holds (`SIGMA_QUEUE_SIZE`); more get "Queue is full".
        max_wait: seconds a request waits for the model (`SIGMA_MAX_WAIT`) before it is told the Space is busy.
    """
    space = SigmaSpace(model_path, corpus, builder, describe_model_path)
    space.lock.timeout = max_wait
    space.start()

    @user_errors
    def search(query: str, k: float):
        start = time.time()
        hits, notice = space.search(query, k)
        gallery = [
            (
                space.image_file(hit["image_id"], hit.get("metadata")),
                f"#{rank} {hit['image_id']} · {hit['identifier']} · "
                f"beam {hit['score']:.2f} · similarity {hit['similarity']:.2f}",
            )
            for rank, hit in enumerate(hits, start=1)
        ]
        rows = [{"rank": rank, **hit} for rank, hit in enumerate(hits, start=1)]
        note = f"{len(hits)} images in {time.time() - start:.2f} s."
        if notice:
            gr.Warning(notice)
            note = f"{note}\n\n**Note:** {notice}"
        return gallery, rows, note

    @user_errors
    def decode(value: str):
        caption, identifier, image_id = space.describe(value)
        note = f"`{identifier}` is the identifier of **{image_id}**."
        if not caption or IDENTIFIER_PATTERN.search(caption):
            note += (
                "\n\n**Note:** The model wrote identifier tokens or nothing, not a caption. Stage 3 trains"
                " caption → identifier only, so a stage-3 checkpoint forgets much of stage 2: set"
                " SIGMA_DESCRIBE_MODEL to the stage-2 checkpoint (same identifiers) to decode with it."
            )
        return caption, space.image_file(image_id), note

    @user_errors
    def add(upload, image_id: str):
        path = upload.get("path") if isinstance(upload, dict) else upload
        image_id, identifier, notice = space.add(path, image_id)
        note = f"Added **{image_id}** as `{identifier}`; it is searchable now ({len(space.index)} images indexed)."
        if notice:
            gr.Warning(notice)
            note = f"{note}\n\n**Note:** {notice}"
        return identifier, note, picker_update(space, identifier)

    @user_errors
    def identifiers(limit: int = PICKER_LIMIT) -> list[dict]:
        """Indexed images (newest uploads first): `{"image_id", "identifier"}` each."""
        return space.identifiers(int(limit))

    def status() -> dict:
        """The Space's state (`starting`, `building`, `loading`, `ready`, `failed`) and its last progress line."""
        size = len(space.index) if space.index is not None else 0
        return {"state": space.state, "progress": space.progress, "images": size}

    def refresh():
        ready = space.state in ("ready", "failed")
        picker = picker_update(space) if space.state == "ready" else gr.skip()
        return space.status_markdown(), gr.Timer(active=not ready), picker

    with gr.Blocks(title="SIGMA generative text-to-image retrieval") as demo:
        gr.Markdown(INTRO)
        status_line = gr.Markdown(space.status_markdown(), elem_id="status")
        timer = gr.Timer(1.0)
        with gr.Tab("Search", id="search"):
            with gr.Row():
                examples = example_queries()
                query = gr.Textbox(label="Describe the image", placeholder=examples[0], lines=2, scale=4)
                k = gr.Slider(1, MAX_K, value=5, step=1, label="k (images)", scale=1)
            search_button = gr.Button("Search", variant="primary")
            search_note = gr.Markdown(elem_id="search-note")
            gallery = gr.Gallery(
                label="Top-k images", columns=5, height="auto", object_fit="contain", format="png",
                elem_id="gallery",
            )  # fmt: skip
            with gr.Accordion("Hits as JSON", open=False):
                hits = gr.JSON(label="hits")
            gr.Examples([[example] for example in examples], inputs=[query])
        with gr.Tab("Decode", id="decode"):
            picker = gr.Dropdown(
                label="Identifier", allow_custom_value=True, elem_id="picker",
                info="Pick an indexed identifier, or type an identifier or an image id.",
            )  # fmt: skip
            decode_button = gr.Button("Decode", variant="primary")
            with gr.Row():
                caption = gr.Textbox(label="Caption the model writes", interactive=False, elem_id="caption")
                decoded_image = gr.Image(
                    label="Indexed image", interactive=False, height=160, elem_id="decoded-image"
                )
            decode_note = gr.Markdown()
        with gr.Tab("Add", id="add"):
            with gr.Row():
                upload = gr.Image(label="Image to index", type="filepath", sources=["upload", "clipboard"])
                with gr.Column():
                    new_id = gr.Textbox(label="Image id (optional)", placeholder="upload-N when empty")
                    add_button = gr.Button("Add to the index", variant="primary")
                    assigned = gr.Textbox(label="Assigned identifier", interactive=False)
            add_note = gr.Markdown()

        gr.on(
            [search_button.click, query.submit], search, [query, k], [gallery, hits, search_note],
            api_name="search", concurrency_limit=2,
        )  # fmt: skip
        decode_button.click(
            decode, picker, [caption, decoded_image, decode_note], api_name="decode", concurrency_limit=1
        )
        # preprocess=False: the upload reaches `add` as a file, so a non-image gets our message, not PIL's
        add_button.click(
            add, [upload, new_id], [assigned, add_note, picker], api_name="add", preprocess=False,
            concurrency_limit=1,
        )  # fmt: skip
        gr.api(identifiers, api_name="identifiers")
        gr.api(status, api_name="status")
        timer.tick(refresh, None, [status_line, timer, picker], api_visibility="private")
        demo.load(refresh, None, [status_line, timer, picker], api_visibility="private")
    # every event waits in one bounded queue: under load a request is told "Queue is full" (or, after `max_wait`
    # seconds without the model, that the Space is busy) instead of hanging until the client gives up
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    demo.sigma_space = space
    return demo


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    build_demo().launch(max_file_size=MAX_UPLOAD_BYTES)
