# Copyright 2026 The SIGMA release team. Licensed under the Apache License, Version 2.0.
"""What the Space does, without the UI: load (or first build) a SIGMA checkpoint, search, describe identifiers
and add images, with every input checked before the index changes.

`SigmaSpace` is thread-safe: one lock covers every model call and index mutation, because a Gradio app serves
several requests at once. User mistakes raise `SigmaSpaceError` with a message meant for the page.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

from build_default import DEFAULT_MODEL, ROOT, build_embedded_default, is_complete_checkpoint
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

DEFAULT_CACHE = ROOT / "outputs" / "cache"
MAX_K = 20
MAX_UPLOAD_PIXELS = 50_000_000  # larger uploads are refused (decompression bombs, memory)
PROCESS_PIXELS = 1024 * 1024  # larger uploads are downscaled to this before the model sees them
DISPLAY_MIN_SIDE = 128  # tiny corpus images are enlarged (nearest) so the gallery shows their pixels
PICKER_LIMIT = 2000
MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # larger files are refused before they are opened
MAX_QUERY_CHARACTERS = 20_000  # longer queries are refused; shorter ones are cut to max_query_length tokens
QUEUE_SIZE = int(os.environ.get("SIGMA_QUEUE_SIZE", "32"))  # requests waiting in Gradio's queue, then "busy"
MAX_WAIT_SECONDS = float(os.environ.get("SIGMA_MAX_WAIT", "20"))  # wait for the model, then "busy"


class SigmaSpaceError(Exception):
    """A problem with the user's input or with the Space's state, phrased for the page."""


class SigmaBusyLock:
    """The lock around the model and the index: a request that cannot take it within `timeout` seconds is told
    that the Space is busy, so heavy load ends in a clear message instead of a client-side timeout."""

    def __init__(self, timeout: float = MAX_WAIT_SECONDS):
        self.timeout = timeout
        self._lock = threading.Lock()

    def __enter__(self) -> SigmaBusyLock:
        if not self._lock.acquire(timeout=self.timeout):
            raise SigmaSpaceError(
                f"The Space is busy: other requests held the model for {self.timeout:.0f} s. Try again in a moment."
            )
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


def register_local_classes() -> None:
    """Let `AutoModel(..., trust_remote_code=True)` use the installed package's classes.

    A checkpoint carries a copy of the code it was saved with; registering the installed classes makes the
    Space use the current code (e.g. `describe`) and keeps transformers from asking on stdin whether to run
    the copy, which fails in the background thread that loads the model.
    """
    from transformers import AutoModel

    from modeling_sigma.modeling.configuration_sigma import SigmaConfig, register_sigma_config
    from modeling_sigma.modeling.modeling_sigma import SigmaForRetrieval

    register_sigma_config()
    AutoModel.register(SigmaConfig, SigmaForRetrieval, exist_ok=True)


def placeholder_image(text: str = "no image") -> Image.Image:
    image = Image.new("RGB", (DISPLAY_MIN_SIDE, DISPLAY_MIN_SIDE), (225, 225, 225))
    ImageDraw.Draw(image).text((12, DISPLAY_MIN_SIDE // 2 - 6), text, fill=(90, 90, 90))
    return image


def for_display(image: Image.Image) -> Image.Image:
    scale = DISPLAY_MIN_SIDE / min(image.size)
    if scale <= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)


def open_upload(path: str | os.PathLike) -> tuple[Image.Image, str | None]:
    """The uploaded file as an RGB image no larger than `PROCESS_PIXELS`, and a notice if it was downscaled."""
    from modeling_sigma.data.corpus import to_rgb

    try:
        with warnings.catch_warnings():  # the size is checked below, with a message that names it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only: the size is known before any pixel is decoded
    except Image.DecompressionBombError as error:
        raise SigmaSpaceError(f"The image is far too large ({error}).") from error
    except Exception as error:  # PIL raises several types for files that are not images
        raise SigmaSpaceError(f"The upload is not an image PIL can read ({error}).") from error
    width, height = image.size
    megapixels = width * height / 1e6
    if width * height > MAX_UPLOAD_PIXELS:
        raise SigmaSpaceError(
            f"The image is {width}×{height} ({megapixels:.1f} MP); the limit is {MAX_UPLOAD_PIXELS / 1e6:.0f} MP."
        )
    try:
        image.load()
    except Exception as error:
        raise SigmaSpaceError(f"The image could not be decoded ({error}).") from error
    image, notice = to_rgb(image), None
    if width * height > PROCESS_PIXELS:
        scale = (PROCESS_PIXELS / (width * height)) ** 0.5
        image = image.resize((max(1, int(width * scale)), max(1, int(height * scale))), Image.BICUBIC)
        notice = f"Downscaled from {width}×{height} ({megapixels:.1f} MP) to {image.width}×{image.height}."
    return image, notice


class SigmaCorpusImages:
    """Image id → image, from a corpus in the SIGMA schema (any split), read lazily."""

    def __init__(self, corpus=None):
        self.corpus = corpus
        self.rows: dict[str, tuple[str, int]] = {}
        if corpus is None:
            return
        splits = corpus.items() if hasattr(corpus, "items") else [("data", corpus)]
        for split, dataset in splits:
            for row, image_id in enumerate(dataset["image_id"]):
                self.rows.setdefault(str(image_id), (split, row))

    @classmethod
    def load(cls, name_or_path: str | None) -> SigmaCorpusImages:
        if not name_or_path or name_or_path.lower() == "none":
            return cls()
        from modeling_sigma.data.corpus import load_corpus

        DEFAULT_CACHE.mkdir(parents=True, exist_ok=True)
        return cls(load_corpus(name_or_path, cache_dir=str(DEFAULT_CACHE)))

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, image_id: str) -> Image.Image | None:
        if image_id not in self.rows:
            return None
        from modeling_sigma.data.corpus import load_image

        split, row = self.rows[image_id]
        dataset = self.corpus[split] if split != "data" else self.corpus
        return load_image(dataset[row]["image"])


class SigmaSpace:
    """The model, its open-set index and the images to show, behind one lock.

    Args:
        model_path: a local checkpoint folder or a Hub repo id (`SIGMA_MODEL`); defaults to the embedded default.
        corpus: a `load_corpus` name/folder/Hub id, a `DatasetDict`, or `None` (`SIGMA_CORPUS`; `"none"` for no
            corpus). Defaults to TinyShapes for local checkpoints.
        builder: called with a progress callback when the checkpoint folder is missing; it must write it.
            Defaults to training the embedded default, for the default path only.
        describe_model_path: the checkpoint that decodes identifiers into captions (`SIGMA_DESCRIBE_MODEL`).
            Stage 3 trains caption → identifier only and forgets much of stage 2's identifier → caption, so
            the embedded default decodes with its stage-2 checkpoint (same identifiers); otherwise the model
            itself decodes.
    """

    def __init__(self, model_path=None, corpus=None, builder=None, describe_model_path=None):
        self.model_path = str(model_path or os.environ.get("SIGMA_MODEL") or DEFAULT_MODEL)
        describe_path = describe_model_path or os.environ.get("SIGMA_DESCRIBE_MODEL")
        self.describe_optional = describe_path is None  # the default stage-2 folder is used only if present
        if describe_path is None and Path(self.model_path).resolve() == DEFAULT_MODEL:
            describe_path = DEFAULT_MODEL.parent / "stage2"
        self.describe_path = str(describe_path) if describe_path else None
        self.describer = None
        is_local = Path(self.model_path).exists() or Path(self.model_path).resolve() == DEFAULT_MODEL
        default_corpus = "tiny-shapes" if is_local else None
        self.corpus_source = corpus if corpus is not None else os.environ.get("SIGMA_CORPUS", default_corpus)
        self.builder = builder
        self.lock = SigmaBusyLock(MAX_WAIT_SECONDS)
        self.ready = threading.Event()
        self.state, self.step, self.progress, self.started = "starting", "", "", time.time()
        self.model = self.index = None
        self.images = SigmaCorpusImages()
        self.uploads: dict[str, Image.Image] = {}
        self.image_dir = Path(tempfile.mkdtemp(prefix="sigma-space-images-"))
        atexit.register(shutil.rmtree, self.image_dir, ignore_errors=True)

    # ---------------------------------------------------------------------------------------- start-up
    def start(self) -> SigmaSpace:
        """Load the model in a background thread (building the embedded default first when missing)."""
        threading.Thread(target=self._start, name="sigma-space-load", daemon=True).start()
        return self

    def _start(self) -> None:
        try:
            path = Path(self.model_path)
            builder = self.builder or (build_embedded_default if path.resolve() == DEFAULT_MODEL else None)
            if builder is not None and not is_complete_checkpoint(path):
                self.state = "building"
                builder(self._report)
                if not is_complete_checkpoint(path):
                    raise RuntimeError(f"the build finished without writing {path}")
            self.state = "loading"
            self._report(f"loading {self.model_path}")
            self._load()
            self.state = "ready"
            self._report(f"ready: {len(self.index)} images indexed")
        except Exception as error:  # shown on the page; the Space keeps serving the status
            logger.exception("the Space could not start")
            self.state, self.progress = "failed", f"{type(error).__name__}: {error}"
        finally:
            self.ready.set()

    def _report(self, line: str) -> None:
        if line.startswith("==="):
            self.step = line.strip("= ")
        self.progress = line[-300:]
        logger.info("%s", line)

    def _load(self) -> None:
        from transformers import AutoModel

        register_local_classes()
        model = AutoModel.from_pretrained(self.model_path, trust_remote_code=True).eval()
        if model.processor is None or model.index is None:
            raise RuntimeError(f"{self.model_path} has no processor or no identifier index")
        describer = model
        optional = self.describe_optional and not is_complete_checkpoint(Path(self.describe_path or "."))
        if self.describe_path and not optional:
            describer = AutoModel.from_pretrained(self.describe_path, trust_remote_code=True).eval()
            model.index.check_compatible(describer)  # it must write the same identifiers
            describer.index = model.index  # one index: the describer knows the images added here too
        self.describer = describer
        source = self.corpus_source
        from_name = source is None or isinstance(source, str)
        images = SigmaCorpusImages.load(source) if from_name else SigmaCorpusImages(source)
        self.model, self.index, self.images = model, model.index, images

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout) and self.state == "ready"

    def status_markdown(self) -> str:
        elapsed = time.time() - self.started
        if self.state == "ready":
            uploads = f", {len(self.uploads)} added here" if self.uploads else ""
            return f"**Ready** — `{self.model_path}`, {len(self.index)} images indexed{uploads}."
        if self.state == "failed":
            return f"**The model could not be loaded** — {self.progress}"
        stage = "Building the model" if self.state == "building" else "Loading the model"
        step = f" — {self.step}" if self.step and self.state == "building" else ""
        last = f"\n\n`{self.progress}`" if self.progress else ""
        return f"**{stage}**{step} ({elapsed:.0f} s so far; the tabs answer once it is ready).{last}"

    def _require_ready(self) -> None:
        if self.state == "failed":
            raise SigmaSpaceError(f"The model could not be loaded: {self.progress}")
        if self.state != "ready":
            raise SigmaSpaceError(
                f"The model is still building ({self.state}, {time.time() - self.started:.0f} s so far); "
                "try again when the status line says ready."
            )

    # ------------------------------------------------------------------------------------------ search
    def fit_query(self, query: str) -> tuple[str, str | None]:
        """The query cut to the model's `max_query_length` prompt tokens, and a notice when it was cut."""
        processor, limit = self.model.processor, self.model.config.max_query_length
        head = query[
            : 64 * limit
        ]  # bounds the tokenizer's work; a token is rarely longer than a few characters
        shortened = processor.truncate_query(head, limit, self.model.config.retrieval_prompt)
        if shortened == query:
            return query, None
        notice = (
            f"The query has {len(query):,} characters; the model reads at most {limit} prompt tokens, so only "
            f"its first {len(shortened):,} characters were searched."
        )
        return shortened, notice

    def search(self, query, k: int = 5) -> tuple[list[dict], str | None]:
        """Top-`k` hits (`image_id`, `identifier`, `score`, `similarity`, `metadata`) and a notice, if any."""
        self._require_ready()
        if not isinstance(query, str) or not query.strip():
            raise SigmaSpaceError("Type a description of the image to search for (the query is empty).")
        if len(query) > MAX_QUERY_CHARACTERS:
            raise SigmaSpaceError(
                f"The query has {len(query):,} characters; the limit is {MAX_QUERY_CHARACTERS:,}."
            )
        try:
            k = int(k)
        except (TypeError, ValueError) as error:
            raise SigmaSpaceError(f"k must be a whole number, got {k!r}.") from error
        if not 1 <= k <= MAX_K:
            raise SigmaSpaceError(f"k must be between 1 and {MAX_K}, got {k}.")
        if any("\ud800" <= character <= "\udfff" for character in query):
            raise SigmaSpaceError(
                "The query is not valid Unicode text (it holds a lone surrogate code point)."
            )
        from modeling_sigma.open_set.index import search

        with self.lock:
            query, notice = self.fit_query(query.strip())
            hits = search(self.index, self.model, [query], k=min(k, len(self.index)))[0]
        return hits, notice

    def image(self, image_id: str, metadata: dict | None = None) -> Image.Image:
        """The image of an indexed id: an upload, the corpus, the metadata path, else a placeholder."""
        image = self.uploads.get(image_id)
        if metadata is None and image_id in self.index:
            metadata = self.index.metadata(image_id)
        metadata = metadata or {}
        try:
            if image is None:
                image = self.images.get(image_id)
            if image is None and metadata.get("path"):
                from modeling_sigma.data.corpus import load_image

                image = load_image(metadata["path"])
        except ValueError as error:
            logger.warning("no image for %s: %s", image_id, error)
            image = None
        return for_display(image) if image is not None else placeholder_image(f"{image_id[:14]}?")

    def image_file(self, image_id: str, metadata: dict | None = None) -> str:
        """`image(image_id)` as a PNG file, written once per id (atomically) and reused.

        Gradio writes returned PIL images to its cache in place, so two requests showing the same image at
        once can serve a half-written file; it copies returned files atomically instead.
        """
        path = self.image_dir / f"{hashlib.sha256(image_id.encode()).hexdigest()[:24]}.png"
        if not path.exists():
            staging = path.with_name(f".{threading.get_ident()}-{path.name}")
            self.image(image_id, metadata).save(staging, format="PNG")
            os.replace(staging, path)
        return str(path)

    # ------------------------------------------------------------------------------------------ decode
    def resolve_identifier(self, value) -> tuple[str, str]:
        """(identifier, image id) of a picked identifier, or of an image id typed instead."""
        if not isinstance(value, str) or not value.strip():
            raise SigmaSpaceError("Pick an identifier (or type one, or an image id).")
        value = value.strip()
        if value in self.index:
            return self.index.identifier(value), value
        try:
            return value, self.index.image_id_of(value)
        except KeyError as error:
            raise SigmaSpaceError(f"{value} is well formed but no indexed image has it.") from error
        except ValueError as error:
            raise SigmaSpaceError(
                f"{value!r} is neither an identifier nor an indexed image id ({error})."
            ) from error

    def describe(self, value) -> tuple[str, str, str]:
        """(caption the model writes for the identifier, identifier, image id)."""
        self._require_ready()
        with self.lock:
            identifier, image_id = self.resolve_identifier(value)
            caption = self.describer.describe([identifier])[0]
        return caption, identifier, image_id

    # --------------------------------------------------------------------------------------------- add
    def add(self, path, image_id=None) -> tuple[str, str, str | None]:
        """Index an uploaded image file; returns (image id, identifier, notice). The index is unchanged on error."""
        self._require_ready()
        if not path:
            raise SigmaSpaceError("Upload an image first.")
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        if size > MAX_UPLOAD_BYTES:
            raise SigmaSpaceError(
                f"The file is {size / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MB."
            )
        from modeling_sigma.open_set.index import add_images

        image, notice = open_upload(path)
        with self.lock:
            image_id = str(image_id).strip() if image_id else self._fresh_upload_id()
            if image_id in self.index:
                raise SigmaSpaceError(f"The image id {image_id!r} is already in the index; choose another.")
            try:
                codes = add_images(
                    self.index, self.model, [image], [image_id], metadata=[{"source": "space upload"}]
                )
            except ValueError as error:
                raise SigmaSpaceError(f"The image could not be indexed: {error}") from error
            self.uploads[image_id] = image
        return image_id, self.index.layout.codes_to_string(codes[0].tolist()), notice

    def _fresh_upload_id(self) -> str:
        number = len(self.uploads) + 1
        while f"upload-{number}" in self.index:
            number += 1
        return f"upload-{number}"

    def identifiers(self, limit: int = PICKER_LIMIT) -> list[dict]:
        """Indexed images (newest uploads first), as `{"image_id", "identifier"}`, at most `limit`."""
        if self.state != "ready":
            return []
        with self.lock:
            uploads = [image_id for image_id in reversed(self.uploads) if image_id in self.index]
            others = (image_id for image_id in self.index.image_ids if image_id not in self.uploads)
            chosen = uploads[:limit]
            chosen += [image_id for _, image_id in zip(range(limit - len(chosen)), others)]
            return [
                {"image_id": image_id, "identifier": self.index.identifier(image_id)} for image_id in chosen
            ]


__all__ = [
    "SigmaBusyLock",
    "SigmaCorpusImages",
    "SigmaSpace",
    "SigmaSpaceError",
    "build_embedded_default",
    "open_upload",
]
