"""`synthetic_scenes`: procedurally generated street scenes, the embedded default data set.

Every scene is a horizon with sky and buildings above it, a road, a sidewalk and sometimes a lawn
below it, trees, street clutter, 0-4 people (some carrying purses), and foreground bushes and
poles that occlude them. Each surface is painted in its material's typical colours (asphalt,
paving, foliage, facades, skin, leather) most of the time and in any colour otherwise, with
class-typical but overlapping textures: appearance is a strong hint, never the answer, and
clothing is any colour. Shape, position and context decide the rest: a purse is a small
leather-coloured box *held by a person*, while boxes of the same size and look standing on the
ground are background. Lighting gradients, cast shadows, colour casts and sensor noise vary per
image. (Version 1.0.0 drew every colour from one shared pool: a much harder set, on which the
small default model did not learn purses within its budget.)

Classes: 0 background/unknown (sky, road, clutter), 1 person, 2 purse, 3 plants/grass,
4 sidewalk, 5 building/structures (buildings, poles).

Generation is vectorised over chunks of `_CHUNK` images and deterministic: the scenes of chunk
`c` of split `s` depend only on (seed, s, c, image_size) and the chunk's length, so the same
config always builds bit-identical data. The default config (3000 train / 300 validation images
at 128x128) builds in seconds on a CPU (measured: BENCHMARKS.md, section "Synthetic data set
build").
"""

import concurrent.futures
import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

CLASS_NAMES = ("background", "person", "purse", "plants", "sidewalk", "building")
PALETTE = (
    (0, 0, 0),
    (220, 20, 60),
    (255, 200, 0),
    (107, 142, 35),
    (244, 35, 232),
    (70, 70, 70),
)
BACKGROUND, PERSON, PURSE, PLANTS, SIDEWALK, BUILDING = range(6)

SPLITS = {"train": 0, "validation": 1}
_VERSION = "1.1.0"  # A new version for any change of the rendered data: caches never mix.
_CHUNK = 64
_MAX_PEOPLE = 4

# Texture kinds in the per-chunk texture bank; each region mixes two colours by one texture.
_FLAT, _STRIPES, _GRID, _BLOTCH, _SPECKLE = range(5)
_VARIANTS = 6  # textures of each kind in a bank
# P(texture kind | class). Deliberately overlapping: texture is a hint, never the answer.
_TEXTURE_PROBS = np.array(
    [
        [0.35, 0.05, 0.05, 0.25, 0.30],  # background
        [0.45, 0.30, 0.10, 0.10, 0.05],  # person
        [0.55, 0.15, 0.10, 0.10, 0.10],  # purse
        [0.05, 0.05, 0.05, 0.45, 0.40],  # plants
        [0.10, 0.05, 0.65, 0.05, 0.15],  # sidewalk
        [0.15, 0.25, 0.50, 0.05, 0.05],  # building
    ]
)


@dataclasses.dataclass(eq=False)
class SyntheticScenesConfig(tfds.core.BuilderConfig):
    """Size of the generated data set; tests build tiny ones, the default is CPU-trainable.

    Attributes:
      image_size: side of the square images, px.
      num_train: number of `train` images.
      num_validation: number of `validation` images.
      seed: generation seed; same config -> bit-identical data.
    """

    image_size: int = 128
    num_train: int = 3000
    num_validation: int = 300
    seed: int = 0


def config_name(image_size: int, num_train: int, num_validation: int, seed: int) -> str:
    """The tfds config name (and data sub-directory) of one generation setting."""
    return f"s{image_size}_train{num_train}_val{num_validation}_seed{seed}"


def make_config(
    image_size: int, num_train: int, num_validation: int, seed: int
) -> SyntheticScenesConfig:
    """Returns the registered default config when the fields match it, else a custom one.

    tfds refuses a custom config that shares a name with a registered one, so the default
    setting must be passed as the registered instance.
    """
    name = config_name(image_size, num_train, num_validation, seed)
    for registered in SyntheticScenes.BUILDER_CONFIGS:
        if registered.name == name:
            return registered
    if image_size < 16 or num_train < 1 or num_validation < 1:
        raise ValueError(
            "config.data.synthetic: need image_size >= 16 and num_train, num_validation >= 1, "
            f"got image_size={image_size}, num_train={num_train}, "
            f"num_validation={num_validation}"
        )
    return SyntheticScenesConfig(
        name=name,
        version=_VERSION,
        description="custom size",
        image_size=image_size,
        num_train=num_train,
        num_validation=num_validation,
        seed=seed,
    )


class SyntheticScenes(tfds.core.GeneratorBasedBuilder):
    """Procedural street scenes with 6 classes; see the module docstring."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "Materials: typical colours per surface (asphalt, paving, foliage, facades, "
        "leather, skin), more class-typical textures; purse-like decoys on the ground.",
    }
    BUILDER_CONFIGS = [
        SyntheticScenesConfig(
            name=config_name(128, 3000, 300, 0),
            version=_VERSION,
            description="default: 3000 train / 300 validation images, 128x128",
        )
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="jpeg"),
                    "label": tfds.features.Image(shape=(size, size, 1), encoding_format="png"),
                    "file_name": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data is generated.
        cfg = self.builder_config
        counts = {"train": cfg.num_train, "validation": cfg.num_validation}
        return {split: self._generate_examples(split, counts[split]) for split in SPLITS}

    def _generate_examples(self, split: str, count: int):
        cfg = self.builder_config

        def render_and_encode(chunk_start):
            n = min(_CHUNK, count - chunk_start)
            images, labels = render_scenes(
                cfg.seed, SPLITS[split], chunk_start // _CHUNK, n, cfg.image_size
            )
            return [
                (_encode(im, "JPEG", quality=95), _encode(lb, "PNG"))
                for im, lb in zip(images, labels)
            ]

        # numpy and PIL release the GIL on large arrays, so two threads nearly halve build time;
        # `map` keeps chunk order, and each chunk's content depends only on its index.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            starts = range(0, count, _CHUNK)
            for chunk_start, encoded in zip(starts, pool.map(render_and_encode, starts)):
                for j, (image, label) in enumerate(encoded):
                    key = f"{split}_{chunk_start + j:06d}"
                    yield key, {"image": image, "label": label, "file_name": key}


def _encode(array: np.ndarray, image_format: str, **options) -> bytes:
    # Encode here (JPEG q95 images: several times smaller and faster to encode than PNG of noisy
    # pixels, BENCHMARKS.md, section "Synthetic data set build"; lossless PNG labels): tfds would
    # otherwise encode through a TF graph, one image at a time.
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


class _Canvas:
    """Painter's-algorithm canvas: a per-pixel id of the topmost region ("slot").

    Every painted region gets a slot id; its class, colours and texture are looked up per pixel
    at the end, so painting costs one mask and one masked copy per region.
    """

    def __init__(self, n: int, size: int):
        self.slot = np.zeros((n, size, size), np.int16)  # slot 0: the sky
        self.classes = [BACKGROUND]
        self.looks = ["sky"]  # per slot: a key of _LOOKS, how its colours are drawn

    def paint(self, mask: np.ndarray, cls: int, look: str = "any") -> int:
        slot_id = len(self.classes)
        self.classes.append(cls)
        self.looks.append(look)
        np.copyto(self.slot, np.int16(slot_id), where=mask)
        return slot_id

    def paint_some(self, images: np.ndarray, mask: np.ndarray, cls: int, look: str = "any") -> int:
        """Paints `mask` [len(images), S, S] into the listed images only."""
        slot_id = len(self.classes)
        self.classes.append(cls)
        self.looks.append(look)
        if images.size:
            self.slot[images] = np.where(mask, np.int16(slot_id), self.slot[images])
        return slot_id


class _Scene:
    """One chunk's random stream and pixel grid, and the shape primitives drawn on it.

    Shapes are bool masks [n, S, S] (one per image) from per-image parameters [n], in image
    fractions (0 = top / left, 1 = bottom / right). Every random draw goes through `rng` in the
    order the painting steps run, so that order is part of the data's definition.
    """

    def __init__(self, rng: np.random.Generator, n: int, size: int):
        self.rng, self.n, self.size = rng, n, size
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.Y = centres[None, :, None]  # [1, S, 1], image heights as fractions
        self.X = centres[None, None, :]  # [1, 1, S]
        self.horizon = self.uniform(0.30, 0.55)  # [n]

    def uniform(self, lo, hi, shape=None) -> np.ndarray:
        return self.rng.uniform(lo, hi, (self.n,) if shape is None else shape).astype(np.float32)

    def chance(self, p: float) -> np.ndarray:
        """bool [n]: True with probability p, per image."""
        return self.rng.random(self.n) < p

    def rect(self, y0, y1, x0, x1) -> np.ndarray:
        Y, X = self.Y, self.X
        return ((_col(y0) <= Y) & (Y < _col(y1))) & ((_col(x0) <= X) & (X < _col(x1)))

    def ellipse(self, cy, cx, ry, rx) -> np.ndarray:
        return ((self.Y - _col(cy)) / _col(ry)) ** 2 + ((self.X - _col(cx)) / _col(rx)) ** 2 <= 1.0

    def segment(self, y0, x0, y1, x1, width) -> np.ndarray:
        Y, X = self.Y, self.X
        dy, dx = _col(y1 - y0), _col(x1 - x0)
        t = ((Y - _col(y0)) * dy + (X - _col(x0)) * dx) / (dy * dy + dx * dx)
        t = np.clip(t, 0.0, 1.0)
        return (Y - _col(y0) - t * dy) ** 2 + (X - _col(x0) - t * dx) ** 2 <= _col(width / 2) ** 2


def _col(a) -> np.ndarray:
    """float32 [n] -> [n, 1, 1], to broadcast per-image values over pixels."""
    return np.asarray(a, np.float32)[:, None, None]


def _off_screen(values: np.ndarray, active: np.ndarray) -> np.ndarray:
    # Inactive objects are moved far off the image: cheaper than masking every paint. Move a
    # coordinate that all of the object's extent depends on (its x for tall objects).
    return np.where(active, values, np.float32(-10.0))


def render_scenes(
    seed: int, split_id: int, chunk: int, n: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Renders one chunk of scenes.

    Args:
      seed: data set seed.
      split_id: 0 train, 1 validation (different scenes for the same seed).
      chunk: chunk index within the split.
      n: number of images in the chunk.
      size: image side, px.

    Returns:
      images: uint8 [n, size, size, 3]; labels: uint8 [n, size, size], class ids 0..5.
    """
    scene = _Scene(np.random.default_rng([seed, split_id, chunk, size]), n, size)
    canvas = _Canvas(n, size)
    # Back to front (painter's algorithm): each step occludes what the earlier ones painted.
    ground_slots = _paint_ground(scene, canvas)
    _paint_buildings(scene, canvas)
    _paint_trees(scene, canvas)
    _paint_clutter(scene, canvas)
    shadows, torso_slots, arm_slots = _paint_people(scene, canvas)
    _paint_foreground(scene, canvas)

    labels = np.asarray(canvas.classes, np.uint8)[canvas.slot]
    image = _apply_materials(scene, canvas, torso_slots, arm_slots)
    in_shadow = np.logical_or.reduce(shadows) & (canvas.slot < ground_slots)
    image = _apply_lighting(scene, image, in_shadow)
    _add_sensor_noise(scene, image)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), labels


def _paint_ground(scene: _Scene, canvas: _Canvas) -> int:
    """Road (background), an optional lawn beyond the sidewalk, and the sidewalk itself, bounded
    by two lines through a vanishing point on the horizon. Returns the first slot id above the
    ground: shadows fall on slots below it only."""
    n, size, X = scene.n, scene.size, scene.X
    below = scene.Y - _col(scene.horizon)  # > 0 under the horizon
    ground = below >= 0
    canvas.paint(np.broadcast_to(ground, (n, size, size)), BACKGROUND, "asphalt")
    vanish_x = scene.uniform(0.15, 0.85)
    left = scene.uniform(-1.6, 0.4)
    right = left + scene.uniform(0.5, 1.8)
    side = X - _col(vanish_x)
    gap = scene.uniform(0.1, 0.6)
    lawn_left = scene.chance(0.5)
    lawn_slope = np.where(lawn_left, left - gap, right + gap)
    lawn = np.where(
        _col(lawn_left), side < _col(lawn_slope) * below, side >= _col(lawn_slope) * below
    )
    canvas.paint(ground & lawn & _col(scene.chance(0.6)).astype(bool), PLANTS, "foliage")
    canvas.paint(
        ground & (side >= _col(left) * below) & (side < _col(right) * below), SIDEWALK, "paving"
    )
    return len(canvas.classes)


def _paint_buildings(scene: _Scene, canvas: _Canvas) -> None:
    """Up to 5 buildings standing on the horizon."""
    horizon = scene.horizon
    for _ in range(5):
        x0 = _off_screen(scene.uniform(-0.1, 0.9), scene.chance(0.85))
        top = horizon * scene.uniform(0.05, 0.85)
        canvas.paint(
            scene.rect(top, horizon + scene.uniform(0.0, 0.04), x0, x0 + scene.uniform(0.12, 0.45)),
            BUILDING,
            "facade",
        )


def _paint_trees(scene: _Scene, canvas: _Canvas) -> None:
    """Up to 2 trees on the horizon: trunk, then canopy."""
    horizon = scene.horizon
    for _ in range(2):
        tx = _off_screen(scene.uniform(0.0, 1.0), scene.chance(0.6))
        cy = horizon - scene.uniform(0.02, 0.2)
        ry = scene.uniform(0.06, 0.16)
        half = scene.uniform(0.008, 0.02)
        trunk = scene.rect(cy, horizon + scene.uniform(0.01, 0.08), tx - half, tx + half)
        canvas.paint(trunk, PLANTS, "bark")
        canvas.paint(scene.ellipse(cy, tx, ry, ry * scene.uniform(0.6, 1.2)), PLANTS, "foliage")


def _paint_clutter(scene: _Scene, canvas: _Canvas) -> None:
    """Up to 5 boxes or blobs on the ground (background); the last two are purse-sized."""
    horizon, rng = scene.horizon, scene.rng
    for k in range(5):
        active = scene.chance(0.5)
        bottom = _off_screen(scene.uniform(0.05, 0.6) + horizon, active)
        scale = (bottom - horizon) * (
            scene.uniform(0.25, 0.7) if k < 3 else scene.uniform(0.1, 0.18)
        )
        cx = scene.uniform(0.0, 1.0)
        half_w = scale * scene.uniform(0.4, 1.0)
        # The last two are purse-like decoys half of the time: context must tell them apart.
        look = "leather" if k >= 3 and rng.random() < 0.5 else "any"
        if rng.random() < 0.5:
            shape = scene.rect(bottom - scale, bottom, cx - half_w, cx + half_w)
        else:
            shape = scene.ellipse(bottom - scale / 2, cx, scale / 2, half_w)
        canvas.paint(shape, BACKGROUND, look)


def _paint_people(scene: _Scene, canvas: _Canvas) -> tuple[list, list[int], list[int]]:
    """0-4 people per image, far to near so nearer ones occlude, some carrying a purse.

    Height follows perspective: feet lower in the image means closer, hence taller. Returns the
    shadow masks at their feet, the torso slot ids and the arm slot ids (two per torso).
    """
    n, rng, horizon = scene.n, scene.rng, scene.horizon
    count = rng.choice(_MAX_PEOPLE + 1, size=n, p=[0.1, 0.3, 0.3, 0.2, 0.1])
    feet = scene.uniform(0.12, 0.6, (n, _MAX_PEOPLE)) + horizon[:, None]
    feet = np.sort(feet, axis=1)
    active = np.arange(_MAX_PEOPLE)[None, :] < count[:, None]
    active = np.take_along_axis(
        active, rng.permuted(np.tile(np.arange(_MAX_PEOPLE), (n, 1)), axis=1), 1
    )
    heights = np.maximum((feet - horizon[:, None]) * scene.uniform(1.1, 1.5, (n, _MAX_PEOPLE)), 0.1)
    xs = scene.uniform(0.03, 0.97, (n, _MAX_PEOPLE))
    shadows, torso_slots, arm_slots = [], [], []
    for j in range(_MAX_PEOPLE):
        h, px = heights[:, j], xs[:, j]
        py = _off_screen(feet[:, j], active[:, j])
        shadows.append(scene.ellipse(py, px + 0.08 * h, 0.03 * h, 0.2 * h))
        hip, shoulder = py - 0.47 * h, py - 0.84 * h
        canvas.paint(scene.rect(hip, py, px - 0.11 * h, px - 0.015 * h), PERSON)  # legs
        canvas.paint(scene.rect(hip, py, px + 0.015 * h, px + 0.11 * h), PERSON)
        torso = scene.rect(shoulder, hip + 0.03 * h, px - 0.13 * h, px + 0.13 * h)
        torso_slots.append(canvas.paint(torso, PERSON))
        for x0, x1 in ((px - 0.19 * h, px - 0.13 * h), (px + 0.13 * h, px + 0.19 * h)):
            arm_slots.append(canvas.paint(scene.rect(shoulder + 0.02 * h, hip, x0, x1), PERSON))
        canvas.paint(scene.ellipse(py - 0.92 * h, px, 0.085 * h, 0.07 * h), PERSON, "skin")
        _paint_purse(scene, canvas, px, h, hip, shoulder, active[:, j])
    return shadows, torso_slots, arm_slots


def _paint_purse(
    scene: _Scene,
    canvas: _Canvas,
    px: np.ndarray,
    h: np.ndarray,
    hip: np.ndarray,
    shoulder: np.ndarray,
    person_active: np.ndarray,
) -> None:
    """A purse hanging from one hand, for 55% of the people; half of them also have a strap over
    the other shoulder. The person: centre x `px`, height `h`, `hip` and `shoulder` y, all [n]."""
    has_purse = scene.chance(0.55)
    hand = np.where(scene.chance(0.5), -1.0, 1.0).astype(np.float32)
    hand_x = px + hand * 0.16 * h
    purse_w, purse_h = scene.uniform(0.16, 0.26) * h, scene.uniform(0.13, 0.2) * h
    purse_cx = hand_x + hand * 0.06 * h
    top = _off_screen(hip - 0.02 * h, has_purse)
    canvas.paint(
        scene.rect(top, top + purse_h, purse_cx - purse_w / 2, purse_cx + purse_w / 2),
        PURSE,
        "leather",
    )
    # Straps are segments, costly to rasterise: only images that have one draw it.
    strap = np.flatnonzero(has_purse & person_active & scene.chance(0.5))
    canvas.paint_some(
        strap,
        scene.segment(
            *(v[strap] for v in (shoulder + 0.02 * h, px - hand * 0.1 * h, top, hand_x)),
            0.025 * h[strap],
        ),
        PURSE,
        "leather",
    )


def _paint_foreground(scene: _Scene, canvas: _Canvas) -> None:
    """Up to 2 bushes (occluding legs and purses), then up to 2 poles (occluding everything)."""
    horizon = scene.horizon
    for _ in range(2):
        cy = _off_screen(horizon + scene.uniform(0.25, 0.65), scene.chance(0.35))
        rx = scene.uniform(0.06, 0.18)
        bush = scene.ellipse(cy, scene.uniform(0.0, 1.0), rx * scene.uniform(0.4, 0.8), rx)
        canvas.paint(bush, PLANTS, "foliage")
    for _ in range(2):
        top = scene.uniform(0.02, 0.9) * horizon
        cx = _off_screen(scene.uniform(0.0, 1.0), scene.chance(0.35))
        half = scene.uniform(0.006, 0.015)
        pole = scene.rect(top, horizon + scene.uniform(0.1, 0.5), cx - half, cx + half)
        canvas.paint(pole, BUILDING, "metal")


def _apply_materials(
    scene: _Scene, canvas: _Canvas, torso_slots: list[int], arm_slots: list[int]
) -> np.ndarray:
    """float32 [n, S, S, 3]: every slot's pixels, two colours mixed by one texture of the bank.

    Each slot's first colour is its material's typical colour (asphalt, paving, foliage, ...)
    most of the time and anything otherwise, so colour is a strong hint but never the answer.
    """
    rng, n, size = scene.rng, scene.n, scene.size
    classes = np.asarray(canvas.classes, np.uint8)
    num_slots = len(classes)
    colour = _slot_colours(rng, canvas.looks, n)
    # Sleeves match the shirt.
    colour[:, arm_slots] = np.repeat(colour[:, torso_slots], 2, axis=1)
    second = np.clip(colour + rng.normal(0, 35, colour.shape), 0, 255).astype(np.float32)

    kind_cdf = np.cumsum(_TEXTURE_PROBS[classes], axis=1)  # [K, kinds]
    kind = (rng.random((n, num_slots, 1)) > kind_cdf[None]).sum(-1)
    texture = kind * _VARIANTS + rng.integers(0, _VARIANTS, (n, num_slots))
    offset_y = rng.integers(0, size, (n, num_slots))
    offset_x = rng.integers(0, size, (n, num_slots))

    # Per pixel: one gather of the slot's texel base, one of the texture bank, two of colours.
    # The bank is tiled 2x so texel offsets need no modulo.
    bank = _texture_bank(rng, size)
    bank = np.tile(bank, (1, 2, 2)).reshape(-1)
    base = texture * (4 * size * size) + offset_y * (2 * size) + offset_x  # [n, K]
    flat_slot = (np.arange(n, dtype=np.int32)[:, None, None] * num_slots + canvas.slot).ravel()
    pixels = np.arange(size, dtype=np.int32)
    texel = np.take(base.astype(np.int32).reshape(-1), flat_slot).reshape(n, size, size)
    mix = np.take(bank, texel + (pixels[:, None] * (2 * size) + pixels[None, :]))
    c1 = np.take(colour.reshape(-1, 3), flat_slot, axis=0).reshape(n, size, size, 3)
    delta = np.take((second - colour).reshape(-1, 3), flat_slot, axis=0)
    return c1 + mix[..., None] * delta.reshape(n, size, size, 3)


def _apply_lighting(scene: _Scene, image: np.ndarray, in_shadow: np.ndarray) -> np.ndarray:
    """Global gain with a linear gradient, shadows (`in_shadow` [n, S, S]), a colour cast."""
    angle = scene.uniform(0, 2 * np.pi)
    gradient = _col(np.cos(angle)) * (scene.Y - 0.5) + _col(np.sin(angle)) * (scene.X - 0.5)
    gain = _col(scene.uniform(0.65, 1.25)) * (1.0 + _col(scene.uniform(0.0, 0.6)) * gradient)
    gain = np.where(in_shadow, gain * np.float32(0.65), gain)
    image *= gain[..., None] * scene.uniform(0.9, 1.1, (scene.n, 1, 1, 3))
    return image


def _add_sensor_noise(scene: _Scene, image: np.ndarray) -> None:
    """Adds Gaussian noise to `image` [n, S, S, 3] in place, one sigma per image."""
    size, rng = scene.size, scene.rng
    # Windows of one shared noise field: much cheaper than fresh per-pixel draws (BENCHMARKS.md,
    # section "Synthetic data set build"); each image still gets per-pixel Gaussian noise.
    field = rng.standard_normal((2 * size, 2 * size, 3), np.float32)
    sigma = scene.uniform(2.0, 10.0)
    for i, (oy, ox) in enumerate(rng.integers(0, size, (scene.n, 2))):
        image[i] += field[oy : oy + size, ox : ox + size] * sigma[i]


def _shade(rng, base, spread, size):
    """float32 [*size, 3]: `base` RGB times a common brightness factor, plus per-channel jitter."""
    gain = rng.uniform(1.0 - spread, 1.0 + spread, (*size, 1))
    jitter = rng.normal(0.0, 8.0, (*size, 3))
    return np.clip(np.asarray(base, np.float32) * gain + jitter, 0, 255).astype(np.float32)


# Materials: (probability of the typical colours, [(weight, base RGB, brightness spread), ...]).
# The rest of the time a slot takes a uniformly random colour.
_LOOKS = {
    "any": (0.0, []),
    "sky": (0.9, [(0.7, (120, 170, 225), 0.2), (0.3, (200, 205, 210), 0.15)]),
    "asphalt": (0.9, [(1.0, (85, 85, 90), 0.35)]),
    "paving": (0.9, [(0.6, (175, 172, 165), 0.15), (0.4, (200, 185, 160), 0.12)]),
    "foliage": (0.9, [(0.7, (60, 120, 45), 0.4), (0.3, (120, 140, 50), 0.3)]),
    "bark": (0.9, [(1.0, (95, 70, 50), 0.3)]),
    "facade": (
        0.85,
        [(0.4, (160, 75, 60), 0.25), (0.35, (150, 150, 150), 0.3), (0.25, (210, 195, 160), 0.1)],
    ),
    "metal": (0.85, [(1.0, (70, 75, 80), 0.4)]),
    "skin": (0.7, [(0.5, (225, 180, 150), 0.1), (0.5, (150, 100, 70), 0.25)]),
    "leather": (
        0.9,
        [(0.45, (120, 70, 40), 0.3), (0.25, (35, 30, 30), 0.3), (0.3, (190, 40, 50), 0.15)],
    ),
}


def _slot_colours(rng: np.random.Generator, looks: list[str], n: int) -> np.ndarray:
    """float32 [n, K, 3]: the first colour of each of K slots in n images, by material."""
    colour = rng.uniform(30, 225, (n, len(looks), 3)).astype(np.float32)
    looks = np.asarray(looks)
    for look, (p_typical, options) in _LOOKS.items():
        slots = np.flatnonzero(looks == look)
        if not options or not slots.size:
            continue
        size = (n, slots.size)
        weights = np.array([w for w, _, _ in options])
        choice = rng.choice(len(options), size=size, p=weights / weights.sum())
        typical = np.zeros((*size, 3), np.float32)
        for i, (_, base, spread) in enumerate(options):
            typical = np.where((choice == i)[..., None], _shade(rng, base, spread, size), typical)
        keep = (rng.random(size) < p_typical)[..., None]
        colour[:, slots] = np.where(keep, typical, colour[:, slots])
    return colour


def _texture_bank(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textures in [0, 1], float32 [5 * _VARIANTS, size, size], periodic so offsets wrap cleanly."""
    t = np.arange(size, dtype=np.float32) / size
    Y, X = t[:, None], t[None, :]
    bank = np.zeros((5, _VARIANTS, size, size), np.float32)
    for v in range(_VARIANTS):
        ky, kx = rng.integers(-12, 13, 2)
        ky = ky if ky or kx else 6
        bank[_STRIPES, v] = 0.5 + 0.5 * np.sin(2 * np.pi * (ky * Y + kx * X))
        period = rng.integers(3, 12, 2)
        duty = rng.uniform(0.35, 0.75)
        pixels = np.arange(size)
        bank[_GRID, v] = ((pixels[:, None] % period[0]) < duty * period[0]) & (
            (pixels[None, :] % period[1]) < duty * period[1]
        )
        waves = rng.integers(-4, 5, (6, 2))
        phases = rng.uniform(0, 2 * np.pi, 6)
        blotch = sum(
            np.sin(2 * np.pi * (wy * Y + wx * X) + p) for (wy, wx), p in zip(waves, phases)
        )
        bank[_BLOTCH, v] = (blotch - blotch.min()) / max(np.ptp(blotch), 1e-6)
        bank[_SPECKLE, v] = rng.random((size, size)) ** 2
    return bank.reshape(5 * _VARIANTS, size, size)
