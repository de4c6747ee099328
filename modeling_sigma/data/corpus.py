"""TinyShapes: the embedded image–caption corpus, and the corpus schema every adapter produces.

TinyShapes is a seeded procedural generator of RGB scenes holding 1–3 coloured shapes on a background.
Each image has five captions of deliberately different granularity (full, partial, relational, coarse,
paraphrase), the one-image-many-captions structure of Flickr30K. Attributes are drawn from small
vocabularies, so many images share attributes and a partial caption matches several images.

Schema (every corpus): a `datasets.DatasetDict` whose splits have the columns
`image` (`datasets.Image`), `image_id` (str) and `captions` (list of str).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass, field

import datasets
from PIL import Image, ImageDraw

from modeling_sigma.modeling.file_utils import atomic_folder, restore_interrupted_folder

logger = logging.getLogger(__name__)

CORPUS_COLUMNS = ("image", "image_id", "captions")
SPLITS = ("train", "test", "unseen")
EMBEDDED_CORPUS_NAME = "tiny-shapes"

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = {
    "gray": (128, 128, 128),
    "sand": (214, 190, 140),
    "sky": (150, 200, 240),
    "grass": (120, 180, 100),
}
SIZES = {"small": 0.16, "large": 0.30}
POSITIONS = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}

# Paraphrase vocabulary: other words for the same attribute, so the fifth caption shares few tokens
# with the other four.
SYNONYMS = {
    "circle": "round disc",
    "square": "box",
    "triangle": "three-sided figure",
    "diamond": "rhombus",
    "cross": "plus sign",
    "star": "five-pointed star",
    "red": "crimson",
    "green": "emerald",
    "blue": "navy",
    "yellow": "golden",
    "purple": "violet",
    "orange": "amber",
    "white": "snowy",
    "black": "dark",
    "small": "tiny",
    "large": "big",
    "left": "left side",
    "right": "right side",
    "top": "upper part",
    "bottom": "lower part",
    "center": "middle",
    "gray": "grey",
    "sand": "beige",
    "sky": "light blue",
    "grass": "green field",
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclass
class TinyShapesConfig:
    """Sizes and seed of the embedded corpus.

    Args:
        num_train (`int`): images in the `train` split (images and captions are trained on).
        num_test (`int`): images in the `test` split (indexed; their captions are only ever queries).
        num_unseen (`int`): images in the `unseen` split (never trained on; for open-set indexing).
        image_size (`int`): side of the square RGB images, in pixels.
        seed (`int`): the corpus is a pure function of this seed and the sizes.
    """

    num_train: int = 2000
    num_test: int = 500
    num_unseen: int = 250
    image_size: int = 64
    seed: int = 0

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "test": self.num_test, "unseen": self.num_unseen}


@dataclass
class ShapeObject:
    shape: str
    colour: str
    size: str
    position: str

    def phrase(self, with_size: bool = True) -> str:
        words = f"{self.size} {self.colour}" if with_size else self.colour
        article = "an" if words[0] in "aeiou" else "a"
        return f"{article} {words} {self.shape}"


@dataclass
class Scene:
    background: str
    objects: list[ShapeObject] = field(default_factory=list)


def sample_scene(rng: random.Random) -> Scene:
    """Draws one scene: 1–3 objects at distinct positions on a background."""
    count = rng.choice((1, 2, 2, 3))
    positions = rng.sample(sorted(POSITIONS), count)
    objects = [
        ShapeObject(rng.choice(SHAPES), rng.choice(sorted(COLOURS)), rng.choice(sorted(SIZES)), position)
        for position in positions
    ]
    return Scene(rng.choice(sorted(BACKGROUNDS)), objects)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        t = r / 3
        return [
            (cx - t, cy - r),
            (cx + t, cy - r),
            (cx + t, cy - t),
            (cx + r, cy - t),
            (cx + r, cy + t),
            (cx + t, cy + t),
            (cx + t, cy + r),
            (cx - t, cy + r),
            (cx - t, cy + t),
            (cx - r, cy + t),
            (cx - r, cy - t),
            (cx - t, cy - t),
        ]
    if shape == "star":
        import math

        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Renders a scene as an RGB PIL image (deterministic: no randomness here)."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        fx, fy = POSITIONS[obj.position]
        cx, cy, r = fx * image_size, fy * image_size, SIZES[obj.size] * image_size / 2 * 1.6
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, r), fill=colour)
    return image


def _relation(a: ShapeObject, b: ShapeObject) -> str:
    (ax, ay), (bx, by) = POSITIONS[a.position], POSITIONS[b.position]
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def caption_scene(scene: Scene, rng: random.Random) -> list[str]:
    """Five captions: full, partial, relational, coarse and paraphrase, in that order."""
    objects = scene.objects
    full = " and ".join(f"{o.phrase()} at the {o.position}" for o in objects)
    full = f"{full} on a {scene.background} background"
    partial = objects[rng.randrange(len(objects))].phrase(with_size=False)
    if len(objects) > 1:
        a, b = rng.sample(objects, 2)
        relational = f"{a.phrase(with_size=False)} {_relation(a, b)} {b.phrase(with_size=False)}"
    else:
        relational = f"{objects[0].phrase(with_size=False)} alone in the {objects[0].position}"
    noun = "shape" if len(objects) == 1 else "shapes"
    coarse = f"{COUNT_WORDS[len(objects)]} {noun} on a {scene.background} background"
    parts = [
        f"{SYNONYMS[o.size]} {SYNONYMS[o.colour]} {SYNONYMS[o.shape]} in the {SYNONYMS[o.position]}"
        for o in reversed(objects)
    ]
    paraphrase = f"{SYNONYMS[scene.background]} scene showing " + ", plus ".join(parts)
    return [full, partial, relational, coarse, paraphrase]


def generate_split(config: TinyShapesConfig, split: str) -> datasets.Dataset:
    """Generates one split; a pure function of (config, split)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; TinyShapes has the splits {SPLITS}.")
    size = config.split_sizes()[split]
    rng = random.Random(f"tiny-shapes/{config.seed}/{split}")
    rows = {"image": [], "image_id": [], "captions": []}
    for index in range(size):
        scene = sample_scene(rng)
        rows["image"].append(render_scene(scene, config.image_size))
        rows["image_id"].append(f"{split}-{index:06d}")
        rows["captions"].append(caption_scene(scene, rng))
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "captions": [datasets.Value("string")],
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def generate_tiny_shapes(config: TinyShapesConfig | None = None) -> datasets.DatasetDict:
    """Generates the whole TinyShapes corpus as a `DatasetDict` with `train`, `test` and `unseen` splits."""
    config = config or TinyShapesConfig()
    for split, size in config.split_sizes().items():
        if size < 1:
            raise ValueError(f"TinyShapes split {split!r} must hold at least one image, got {size}.")
    corpus = datasets.DatasetDict({split: generate_split(config, split) for split in SPLITS})
    logger.info("Generated TinyShapes %s", {split: len(ds) for split, ds in corpus.items()})
    return corpus


def validate_corpus(corpus: datasets.DatasetDict | datasets.Dataset, name: str = "corpus") -> None:
    """Raises `ValueError` naming the problem if `corpus` does not follow the SIGMA corpus schema."""
    splits = corpus.items() if isinstance(corpus, datasets.DatasetDict) else [("split", corpus)]
    for split, dataset in splits:
        missing = [column for column in CORPUS_COLUMNS if column not in dataset.column_names]
        if missing:
            raise ValueError(
                f"{name} split {split!r} is missing the column(s) {missing}; a SIGMA corpus needs "
                f"{list(CORPUS_COLUMNS)} (found {dataset.column_names})."
            )
        if len(dataset) == 0:
            raise ValueError(f"{name} split {split!r} is empty.")
        if not isinstance(dataset.features["image"], datasets.Image):
            raise ValueError(f"{name} split {split!r}: column 'image' must be a datasets.Image feature.")
        ids = dataset["image_id"]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name} split {split!r} has duplicate image_id values.")


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts any PIL mode (L, RGBA, P, CMYK, ...) to RGB; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def load_image(value) -> Image.Image:
    """Opens a corpus image value (PIL image, numpy array, path, or `{"bytes"/"path"}` dict) as RGB, or raises a
    `ValueError` that names the problem. Arrays are `(height, width)` grey or `(height, width, 1|3|4)`, `uint8` or
    float in `[0, 1]`."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif type(value).__module__ == "numpy" and hasattr(value, "dtype"):
            image = _array_to_image(value)
        elif isinstance(value, dict) and value.get("bytes") is not None:
            import io

            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, (str, os.PathLike, dict)):
            path = value.get("path") if isinstance(value, dict) else value
            image = Image.open(path)
        else:
            raise TypeError("expected a PIL image, a numpy array, a path or a {'bytes'/'path'} dict")
        image.load()
    except Exception as error:  # PIL raises many types for corrupt files
        raise ValueError(f"Unreadable image {_describe(value)}: {error}") from error
    return to_rgb(image)


def _array_to_image(array) -> Image.Image:
    import numpy as np

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min(initial=0) < 0 or array.max(initial=0) > 1:
            raise ValueError("a float image array must hold finite values in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8, bool or float in [0, 1], got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _describe(value) -> str:
    if isinstance(value, dict):
        return repr(value.get("path") or "<bytes>")
    return repr(value) if isinstance(value, str | os.PathLike) else type(value).__name__


def save_corpus(corpus: datasets.DatasetDict, path: str | os.PathLike) -> None:
    """Save atomically (`file_utils.atomic_folder`): the corpus is written beside `path` and replaces it in
    one step, and an existing corpus at `path` stays complete until the new one is in place."""
    validate_corpus(corpus)
    with atomic_folder(path) as staging:
        corpus.save_to_disk(str(staging))


def load_corpus(
    name_or_path: str = EMBEDDED_CORPUS_NAME,
    cache_dir: str | os.PathLike | None = None,
    tiny_shapes: TinyShapesConfig | None = None,
    **adapter_kwargs,
) -> datasets.DatasetDict:
    """Loads a corpus in the SIGMA schema.

    Args:
        name_or_path: `"tiny-shapes"` (the embedded corpus, generated or read from `cache_dir`), a folder
            written by `save_corpus`/`save_to_disk`, or a Hub dataset id handled by an adapter
            (`nlphuji/flickr30k`, `yerevann/coco-karpathy`).
        cache_dir: where the embedded corpus is cached (keyed by its config) so later stages reuse it.
        tiny_shapes: sizes and seed of the embedded corpus.
    """
    if name_or_path == EMBEDDED_CORPUS_NAME:
        return _load_tiny_shapes(tiny_shapes or TinyShapesConfig(), cache_dir)
    if os.path.isdir(name_or_path):
        corpus = datasets.load_from_disk(name_or_path)
        if isinstance(corpus, datasets.Dataset):
            corpus = datasets.DatasetDict({"test": corpus})
        validate_corpus(corpus, name=name_or_path)
        return corpus
    from modeling_sigma.data.adapters import load_hub_corpus

    return load_hub_corpus(name_or_path, **adapter_kwargs)


def _load_tiny_shapes(config: TinyShapesConfig, cache_dir) -> datasets.DatasetDict:
    if cache_dir is None:
        return generate_tiny_shapes(config)
    key = "-".join(f"{k}{v}" for k, v in asdict(config).items())
    path = os.path.join(os.fspath(cache_dir), f"tiny-shapes-{key}")
    restore_interrupted_folder(path)
    if os.path.isdir(path):
        return datasets.load_from_disk(path)
    corpus = generate_tiny_shapes(config)
    save_corpus(corpus, path)
    return datasets.load_from_disk(path)


def get_split(corpus: datasets.DatasetDict, split: str) -> datasets.Dataset:
    """Returns `corpus[split]` or raises a `ValueError` listing the splits that exist."""
    if split not in corpus:
        raise ValueError(f"Unknown split {split!r}; this corpus has the splits {sorted(corpus)}.")
    return corpus[split]


def caption_pairs(dataset: datasets.Dataset) -> tuple[list[str], list[int]]:
    """Flattens a split into (caption, index of its image) pairs: the query set of Recall@K."""
    captions, owners = [], []
    for index, image_captions in enumerate(dataset["captions"]):
        captions.extend(image_captions)
        owners.extend([index] * len(image_captions))
    return captions, owners


__all__ = [
    "CORPUS_COLUMNS",
    "EMBEDDED_CORPUS_NAME",
    "SPLITS",
    "TinyShapesConfig",
    "caption_pairs",
    "generate_tiny_shapes",
    "get_split",
    "load_corpus",
    "load_image",
    "save_corpus",
    "to_rgb",
    "validate_corpus",
]
