"""Landscapes: a second procedural image–caption corpus, unlike TinyShapes, written as an ImageFolder.

    python examples/landscapes.py --output DIR --num-images 1950 --seed 0

writes `DIR/images/NNNNNN.{jpg,png}` and `DIR/metadata.jsonl` (`file_name`, `captions`), which
`modeling_sigma.data.user_corpus.prepare_corpus(DIR, OUTPUT)` turns into a SIGMA corpus.

Each scene is a sky (day, dusk, night) over a ground (meadow, desert, snow, sea) with 1–3 objects (tree,
house, mountain and, on the sea, boat; cloud and bird in the sky), each with a colour, a size and a place
(left, middle, right), and often a sun or a moon. Captions, 3–5 per image: a full description, a partial one
(one object; sometimes left out), a relational one (two objects; only when there are two), a coarse one
(ground and time of day) and a paraphrase in other words. The images have three sizes and are stored mostly
as RGB JPEG, some as RGBA PNG (a translucent sky) and some as palette PNG, to exercise mixed inputs. The
output is a pure function of the seed and the number of images.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

SKIES = {
    "day": ((110, 170, 235), (200, 225, 250)),
    "dusk": ((90, 60, 130), (250, 150, 90)),
    "night": ((10, 15, 45), (40, 50, 95)),
}
GROUNDS = {"meadow": (80, 160, 70), "desert": (220, 190, 120), "snow": (236, 240, 246), "sea": (35, 95, 170)}
# fmt: off
COLOURS = {
    "red": (200, 40, 40), "white": (245, 245, 240), "brown": (120, 75, 40), "grey": (130, 130, 135),
    "yellow": (235, 200, 40), "blue": (50, 80, 200), "green": (30, 120, 40), "orange": (230, 120, 30),
    "black": (20, 20, 25),
}
# fmt: on
KIND_COLOURS = {
    "tree": ("green", "orange", "yellow"),
    "house": ("red", "white", "yellow", "blue"),
    "mountain": ("grey", "brown", "blue"),
    "boat": ("red", "white", "brown", "yellow"),
    "cloud": ("white", "grey"),
    "bird": ("black", "white", "red"),
}
LAND_KINDS, SEA_KINDS, SKY_KINDS = (
    ("tree", "house", "mountain"),
    ("boat", "boat", "mountain"),
    ("cloud", "bird"),
)
SIZES = {"small": 0.16, "big": 0.28}
PLACES = {"left": 0.2, "middle": 0.5, "right": 0.8}
IMAGE_SIZES = ((64, 48), (72, 72), (96, 64))
HORIZON = 0.6
GROUND_WORDS = {
    "meadow": "a green meadow",
    "desert": "a sandy desert",
    "snow": "a snowy plain",
    "sea": "the open sea",
}
PLACE_WORDS = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
COARSE_WORDS = {"day": "by day", "dusk": "at dusk", "night": "at night"}
# The paraphrase names every attribute with a word that no other caption uses.
# fmt: off
PARAPHRASE = {
    "day": "bright daylight", "dusk": "twilight", "night": "darkness", "meadow": "grassland", "desert": "dunes",
    "snow": "a frozen field", "sea": "the ocean", "tree": "oak", "house": "cottage", "mountain": "peak",
    "boat": "sailboat", "cloud": "puff of vapour", "bird": "gull", "red": "scarlet", "white": "pale",
    "brown": "chestnut", "grey": "ashen", "yellow": "golden", "blue": "azure", "green": "leafy",
    "orange": "autumnal", "black": "inky", "small": "little", "big": "huge", "left": "westward",
    "middle": "central", "right": "eastward", "sun": "sunshine", "moon": "moonlight",
}
# fmt: on


@dataclass
class Thing:
    kind: str
    colour: str
    size: str
    place: str

    def phrase(self, with_size: bool = True) -> str:
        words = f"{self.size} {self.colour}" if with_size else self.colour
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words} {self.kind}"


@dataclass
class Landscape:
    sky: str
    ground: str
    light: str | None  # "sun", "moon" or None
    things: list[Thing] = field(default_factory=list)
    size: tuple[int, int] = (64, 48)
    storage: str = "jpeg"  # "jpeg" (RGB), "rgba" or "palette" (PNG)
    detail_seed: int = 0  # stars and waves


def sample_landscape(rng: random.Random) -> Landscape:
    """Draws one scene: sky, ground, 1–3 things at distinct places, light, image size and storage."""
    sky, ground = rng.choice(sorted(SKIES)), rng.choice(sorted(GROUNDS))
    ground_kinds = SEA_KINDS if ground == "sea" else LAND_KINDS
    things = []
    for place in sorted(rng.sample(sorted(PLACES), rng.choice((1, 2, 2, 3))), key=PLACES.get):
        kind = rng.choice(ground_kinds) if rng.random() < 0.65 else rng.choice(SKY_KINDS)
        things.append(Thing(kind, rng.choice(KIND_COLOURS[kind]), rng.choice(sorted(SIZES)), place))
    light = None if rng.random() < 0.3 else ("moon" if sky == "night" else "sun")
    storage = rng.choices(("jpeg", "rgba", "palette"), weights=(70, 15, 15))[0]
    return Landscape(sky, ground, light, things, rng.choice(IMAGE_SIZES), storage, rng.randrange(2**31))


def render_landscape(scene: Landscape) -> Image.Image:
    """Renders a scene in its storage mode (RGB, RGBA or P); deterministic."""
    width, height = scene.size
    horizon = round(HORIZON * height)
    image = Image.new("RGB", scene.size)
    draw = ImageDraw.Draw(image)
    detail = random.Random(scene.detail_seed)
    for y in range(horizon):
        draw.line([(0, y), (width, y)], fill=_sky_colour(scene.sky, y / max(horizon - 1, 1)))
    if scene.sky == "night":
        for _ in range(8):
            draw.point((detail.randrange(width), detail.randrange(horizon)), fill=(250, 250, 220))
    draw.rectangle([0, horizon, width, height], fill=GROUNDS[scene.ground])
    if scene.ground == "sea":
        for _ in range(5):
            x, y = detail.randrange(width), detail.randrange(horizon + 2, height)
            draw.line([(x, y), (x + 6, y)], fill=(120, 170, 220))
    if scene.light:
        _draw_light(draw, scene, width, height)
    for thing in scene.things:
        _draw_thing(draw, thing, width, height, horizon)
    return _to_storage_mode(image, scene.storage, horizon)


def _sky_colour(sky: str, t: float) -> tuple[int, ...]:
    (top, bottom) = SKIES[sky]
    return tuple(round(a + (b - a) * t) for a, b in zip(top, bottom))


def _draw_light(draw: ImageDraw.ImageDraw, scene: Landscape, width: int, height: int) -> None:
    """The sun or moon, in the free corner away from the things (if there is one)."""
    taken = {thing.place for thing in scene.things}
    r, cx = 0.09 * height, (0.12 if "left" not in taken or "right" in taken else 0.88) * width
    cy = 0.42 * height if scene.sky == "dusk" else 0.15 * height
    colour = {"day": (255, 230, 80), "dusk": (255, 120, 40), "night": (235, 235, 210)}[scene.sky]
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    if scene.light == "moon":  # a crescent: cover most of the disc with the sky
        sky = _sky_colour(scene.sky, cy / (HORIZON * height))
        draw.ellipse([cx - r / 2, cy - r, cx + 1.5 * r, cy + r], fill=sky)


def _draw_thing(draw: ImageDraw.ImageDraw, thing: Thing, width: int, height: int, horizon: int) -> None:
    cx, s, colour = PLACES[thing.place] * width, SIZES[thing.size] * height, COLOURS[thing.colour]
    base = horizon + 0.08 * height
    if thing.kind == "tree":
        draw.rectangle([cx - s / 8, base - s / 2, cx + s / 8, base], fill=COLOURS["brown"])
        draw.ellipse([cx - s / 2, base - 1.3 * s, cx + s / 2, base - 0.4 * s], fill=colour)
    elif thing.kind == "house":
        draw.rectangle([cx - s / 2, base - s, cx + s / 2, base], fill=colour)
        draw.polygon(
            [(cx - 0.65 * s, base - s), (cx, base - 1.6 * s), (cx + 0.65 * s, base - s)], fill=(110, 30, 30)
        )
    elif thing.kind == "mountain":
        draw.polygon([(cx - 1.2 * s, base), (cx, base - 1.8 * s), (cx + 1.2 * s, base)], fill=colour)
        draw.polygon(
            [(cx - 0.3 * s, base - 1.35 * s), (cx, base - 1.8 * s), (cx + 0.3 * s, base - 1.35 * s)],
            fill=COLOURS["white"],
        )
    elif thing.kind == "boat":
        draw.polygon(
            [(cx - s, base - s / 3), (cx + s, base - s / 3), (cx + 0.6 * s, base), (cx - 0.6 * s, base)],
            fill=colour,
        )
        draw.polygon(
            [(cx, base - 1.5 * s), (cx, base - s / 2), (cx + 0.7 * s, base - s / 2)], fill=(250, 250, 250)
        )
    elif thing.kind == "cloud":
        cy = 0.22 * height
        for dx, dy, r in ((-0.5, 0.1, 0.45), (0.0, -0.1, 0.55), (0.5, 0.1, 0.45)):
            draw.ellipse(
                [cx + dx * s - r * s, cy + dy * s - r * s, cx + dx * s + r * s, cy + dy * s + r * s],
                fill=colour,
            )
    else:  # bird: a "v" of two strokes
        cy = 0.25 * height
        draw.line([(cx - s / 2, cy - s / 4), (cx, cy), (cx + s / 2, cy - s / 4)], fill=colour, width=2)


def _to_storage_mode(image: Image.Image, storage: str, horizon: int) -> Image.Image:
    if storage == "rgba":
        alpha = Image.new("L", image.size, 255)
        ImageDraw.Draw(alpha).rectangle([0, 0, image.width, horizon - 1], fill=235)
        image = image.convert("RGBA")
        image.putalpha(alpha)
        return image
    if storage == "palette":
        return image.quantize(colors=48, method=Image.Quantize.MEDIANCUT)
    return image


def caption_landscape(scene: Landscape, rng: random.Random) -> list[str]:
    """3–5 captions: full, [partial], [relational], coarse, paraphrase (see the module docstring)."""
    things = scene.things
    listed = ", ".join(f"{t.phrase()} {PLACE_WORDS[t.place]}" for t in things)
    light = {"sun": " and the sun", "moon": " and the moon", None: ""}[scene.light]
    full = f"a {scene.sky} sky over {GROUND_WORDS[scene.ground]} with {listed}{light}"
    captions = [full]
    if rng.random() < 0.8:
        captions.append(rng.choice(things).phrase(with_size=False))
    if len(things) > 1:
        a, b = sorted(rng.sample(things, 2), key=lambda t: PLACES[t.place])
        captions.append(f"{a.phrase(with_size=False)} left of {b.phrase(with_size=False)}")
    captions.append(f"{GROUND_WORDS[scene.ground].split(' ', 1)[1]} {COARSE_WORDS[scene.sky]}")
    parts = [
        f"{PARAPHRASE[t.size]} {PARAPHRASE[t.colour]} {PARAPHRASE[t.kind]}, {PARAPHRASE[t.place]}"
        for t in things
    ]
    glow = f" under {PARAPHRASE[scene.light]}" if scene.light else ""
    captions.append(f"{PARAPHRASE[scene.ground]} in {PARAPHRASE[scene.sky]}{glow}: " + "; ".join(parts))
    return captions


def generate_landscapes(output_dir: str | Path, num_images: int, seed: int = 0) -> Path:
    """Writes `num_images` scenes as an ImageFolder under `output_dir` (which must be absent or empty)."""
    output = Path(output_dir)
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"{output} is not empty; pass a new folder.")
    (output / "images").mkdir(parents=True)
    rng = random.Random(f"landscapes/{seed}")
    with open(output / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        for index in range(num_images):
            scene = sample_landscape(rng)
            image = render_landscape(scene)
            file_name = f"images/{index:06d}.{'jpg' if scene.storage == 'jpeg' else 'png'}"
            image.save(output / file_name, **({"quality": 90} if scene.storage == "jpeg" else {}))
            record = {"file_name": file_name, "captions": caption_landscape(scene, rng)}
            metadata.write(json.dumps(record) + "\n")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="the ImageFolder to write (absent or empty)")
    parser.add_argument("--num-images", type=int, default=1950)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generate_landscapes(args.output, args.num_images, args.seed)
    print(f"wrote {args.num_images} images and metadata.jsonl to {args.output}")


if __name__ == "__main__":
    main()
