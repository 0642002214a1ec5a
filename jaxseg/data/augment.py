"""Training augmentation on the device: jitted, batched, one sampling grid per example.

The host loader (`jaxseg.data.loading`) only reads, decodes and pads examples to a fixed shape;
everything random happens here, after the batch is on the accelerator (or the CPU device):

- geometry, as ONE sampling grid per example: random scale, the random crop (the tile position),
  left-right flip, rotation about the centre and shift (mirrored at the borders), and the U-Net
  paper's elastic deformation (a coarse 3x3 grid of N(0, sigma) displacements interpolated
  bicubically). The image is resampled once through the composed grid (bicubic when the recipe
  rotates or deforms, bilinear otherwise), the label and any "weight" map with nearest
  neighbour;
- photometric jitter (brightness, contrast, saturation, hue), on the image only;
- normalisation ((x - mean) / std), and the one border rule: pixels the grid takes from outside
  the image are 0 after normalisation (the data set's mean), label 255, weight 0.

Composition, from an output pixel back to its source (the order the old per-example chain
applied the steps: scale, mirror-pad by the model's context, rotate/shift, deform, crop, flip):
flip within the crop -> + crop offset (in the scaled, context-padded frame) -> + elastic
displacement (label 255 past the frame, the image repeats its edge) -> inverse rotation and shift
about the frame's centre (mirrored into the frame) -> - context (mirrored into the scaled image)
-> / scale (half-pixel centres, as an image resize) -> the source pixel.

Randomness: example at global stream position p gets the key fold_in(key(seed), p), so a batch
is a pure function of (seed, step) whatever the host, device or loader-worker count. Every
parameter is drawn by `sample_params` and applied by `warp`, so tests can pass exact ones.
"""

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.labels import IGNORE_ID

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The static description of a training recipe's augmentation (from `config.data`)."""

    crop: tuple[int, int]
    context: tuple[int, int] = (0, 0)
    min_scale: float = 1.0
    max_scale: float = 1.0
    rotation_degrees: float = 0.0
    shift_px: float = 0.0
    elastic: bool = False
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    hflip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @property
    def bicubic(self) -> bool:
        """The paper's recipe resamples bicubically; a scale-only chain bilinearly, as a resize."""
        return self.elastic or self.rotation_degrees > 0 or self.shift_px > 0


def augment_config(
    data_cfg: ml_collections.ConfigDict, context: tuple[int, int] = (0, 0)
) -> AugmentConfig:
    """`AugmentConfig` of `config.data`; `context` = (rows, cols) the model needs around its
    output (`jaxseg.models.input_context`): images are mirror-padded by it."""
    # Every field but crop and context is the `config.data` field of the same name.
    values = {
        f.name: data_cfg[f.name] for f in dataclasses.fields(AugmentConfig) if f.name in data_cfg
    }
    values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
    return AugmentConfig(
        crop=tuple(int(v) for v in data_cfg.crop_size),
        context=tuple(int(v) for v in context),
        **values,
    )


def example_key(seed: int, position: jax.Array) -> jax.Array:
    """The key of the example at global stream `position` (uint32 [2]: high, low word)."""
    key = jax.random.key(seed)
    return jax.random.fold_in(jax.random.fold_in(key, position[0]), position[1])


def position_words(positions: np.ndarray) -> np.ndarray:
    """int64 [N] stream positions -> uint32 [N, 2] (high, low words), the batch's "position"."""
    positions = np.asarray(positions, np.uint64)
    return np.stack([positions >> np.uint64(32), positions & np.uint64(0xFFFFFFFF)], -1).astype(
        np.uint32
    )


def sample_params(key: jax.Array, cfg: AugmentConfig, size: jax.Array) -> dict[str, jax.Array]:
    """Draws one example's augmentation parameters.

    Args:
      key: the example's key (`example_key`).
      cfg: the recipe.
      size: int32 [2], the example's true (height, width) inside its padded array.

    Returns:
      {"scale": f32 [2] (per axis: the scaled size over the true size), "offset": int32 [2],
      "flip": bool, "angle": f32 (radians), "shift": f32 [2], "coarse": f32 [g, g, 2],
      "brightness", "contrast", "saturation", "hue": f32}. Parameters a recipe does not use
      take their identity value.
    """
    keys = [jax.random.fold_in(key, k) for k in range(10)]
    size_f = size.astype(jnp.float32)
    factor = jax.random.uniform(keys[0], (), minval=cfg.min_scale, maxval=cfg.max_scale)
    if cfg.min_scale == cfg.max_scale == 1.0:
        factor = jnp.float32(1.0)
    scaled = jnp.maximum(jnp.round(size_f * factor), 1.0)
    frame = scaled + 2 * jnp.asarray(cfg.context, jnp.float32)
    room = jnp.maximum(frame - jnp.asarray(cfg.crop, jnp.float32), 0.0) + 1.0
    offset = jnp.floor(jax.random.uniform(keys[1], (2,)) * room)
    offset = jnp.minimum(offset, room - 1).astype(jnp.int32)
    flip = jax.random.uniform(keys[2]) < 0.5 if cfg.hflip else jnp.bool_(False)
    angle = jax.random.uniform(keys[3], (), minval=-1.0, maxval=1.0) * cfg.rotation_degrees
    shift = jax.random.uniform(keys[4], (2,), minval=-1.0, maxval=1.0) * cfg.shift_px
    grid = cfg.elastic_grid if cfg.elastic else 1
    coarse = jax.random.normal(keys[5], (grid, grid, 2)) * cfg.elastic_sigma
    if not cfg.elastic:
        coarse = jnp.zeros_like(coarse)

    def uniform(k, v):
        return jax.random.uniform(k, (), minval=-v, maxval=v) if v > 0 else jnp.float32(0.0)

    return {
        "scale": scaled / size_f,
        "offset": offset,
        "flip": flip,
        "angle": angle * (math.pi / 180.0),
        "shift": shift,
        "coarse": coarse,
        "brightness": uniform(keys[6], cfg.brightness),
        "contrast": 1.0 + uniform(keys[7], cfg.contrast),
        "saturation": 1.0 + uniform(keys[8], cfg.saturation),
        "hue": uniform(keys[9], cfg.hue),
    }


def _reflect(x: jax.Array, n: jax.Array) -> jax.Array:
    """Coordinates mirrored into [0, n - 1] about the edge pixels' centres ("reflect": the edge
    pixel is not repeated). Integers inside stay exactly as they are."""
    period = jnp.maximum(2 * (n - 1), 1)
    j = jnp.mod(x, period)
    return jnp.minimum(j, period - j)


def _cubic_weights(t: jax.Array) -> list[jax.Array]:
    """Keys' cubic convolution weights (a = -0.5) for taps at offsets -1, 0, 1, 2; exactly
    (0, 1, 0, 0) at t = 0."""
    a = -0.5

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _resize_matrix(coords: jax.Array, n_out: jax.Array, n_in: int) -> jax.Array:
    """[len(coords), n_in] bicubic interpolation weights of a length-n_in signal resized to
    n_out samples (half-pixel centres, clamped taps), evaluated at output `coords`."""
    src = (coords + 0.5) * (n_in / n_out) - 0.5
    base = jnp.floor(src)
    weights = _cubic_weights(src - base)
    matrix = 0.0
    for k in range(4):
        tap = jnp.clip(base.astype(jnp.int32) + k - 1, 0, n_in - 1)
        matrix = matrix + weights[k][:, None] * jax.nn.one_hot(tap, n_in)
    return matrix


def source_grid(
    params: dict[str, jax.Array], cfg: AugmentConfig, size: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Where each crop pixel comes from: (rows, cols) f32 [h, w] in the source image's pixel
    coordinates, and `inside` bool [h, w] (False where the label is 255)."""
    h, w = cfg.crop
    size_f = size.astype(jnp.float32)
    scaled = jnp.maximum(jnp.round(size_f * params["scale"]), 1.0)
    context = jnp.asarray(cfg.context, jnp.float32)
    frame = scaled + 2 * context
    extent = jnp.minimum(frame, jnp.asarray(cfg.crop, jnp.float32))  # crop beyond the frame: 255
    i = jnp.arange(h, dtype=jnp.float32)
    j = jnp.arange(w, dtype=jnp.float32)
    j = jnp.where(params["flip"], extent[1] - 1 - j, j)
    offset = params["offset"].astype(jnp.float32)
    q_rows = i + offset[0]
    q_cols = j + offset[1]
    rows = jnp.broadcast_to(q_rows[:, None], (h, w))
    cols = jnp.broadcast_to(q_cols[None, :], (h, w))
    inside = (i[:, None] < extent[0]) & (jnp.arange(w)[None, :] < extent[1])
    if cfg.elastic:
        grid = cfg.elastic_grid
        wr = _resize_matrix(q_rows, frame[0], grid)  # [h, g]
        wc = _resize_matrix(q_cols, frame[1], grid)  # [w, g]
        field = jnp.einsum("ia,abk,jb->ijk", wr, params["coarse"], wc)
        rows, cols = rows + field[..., 0], cols + field[..., 1]
        # Past the frame the label is unknown (255); the image repeats its edge.
        inside &= (jnp.round(rows) >= 0) & (jnp.round(rows) <= frame[0] - 1)
        inside &= (jnp.round(cols) >= 0) & (jnp.round(cols) <= frame[1] - 1)
        rows = jnp.clip(rows, 0, frame[0] - 1)
        cols = jnp.clip(cols, 0, frame[1] - 1)
    if cfg.rotation_degrees > 0 or cfg.shift_px > 0:
        # Output p shows source R(angle) p - shift about the frame's centre, mirrored inside.
        cy, cx = (frame[0] - 1) / 2, (frame[1] - 1) / 2
        cos, sin = jnp.cos(params["angle"]), jnp.sin(params["angle"])
        y, x = rows - cy, cols - cx
        rows = _reflect(cos * y - sin * x + cy - params["shift"][0], frame[0])
        cols = _reflect(sin * y + cos * x + cx - params["shift"][1], frame[1])
    if any(cfg.context):
        rows = _reflect(rows - context[0], scaled[0])
        cols = _reflect(cols - context[1], scaled[1])
    if not (cfg.min_scale == cfg.max_scale == 1.0):
        rows = (rows + 0.5) * (size_f[0] / scaled[0]) - 0.5
        cols = (cols + 0.5) * (size_f[1] / scaled[1]) - 0.5
    rows = jnp.clip(rows, 0, size_f[0] - 1)
    cols = jnp.clip(cols, 0, size_f[1] - 1)
    return rows, cols, inside


def _sample(image: jax.Array, rows, cols, size: jax.Array, bicubic: bool) -> jax.Array:
    """image [H, W, C] (first `size` rows/cols real) at fractional (rows, cols) [h, w]; taps
    beyond the real image repeat its edge pixel."""
    r0, c0 = jnp.floor(rows), jnp.floor(cols)
    tr, tc = rows - r0, cols - c0
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
    if bicubic:
        offsets, wr, wc = (-1, 0, 1, 2), _cubic_weights(tr), _cubic_weights(tc)
    else:
        offsets, wr, wc = (0, 1), [1 - tr, tr], [1 - tc, tc]
    out = 0.0
    for a, dr in enumerate(offsets):
        r = jnp.clip(r0 + dr, 0, size[0] - 1)
        for b, dc in enumerate(offsets):
            c = jnp.clip(c0 + dc, 0, size[1] - 1)
            out = out + (wr[a] * wc[b])[..., None] * image[r, c]
    return out


def _rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # The branch follows argmax, not `value == r`: XLA may recompute r inside a fusion with a
    # different rounding, and an equality test would then pick the wrong sector.
    largest = jnp.argmax(rgb, -1)
    value = jnp.max(rgb, -1)
    span = value - jnp.min(rgb, -1)
    saturation = jnp.where(value > 0, span / jnp.where(value > 0, value, 1.0), 0.0)
    safe = jnp.where(span > 0, span, 1.0)
    hue = jnp.select(
        [largest == 0, largest == 1],
        [(g - b) / safe, 2.0 + (b - r) / safe],
        4.0 + (r - g) / safe,
    )
    hue = jnp.where(span > 0, jnp.mod(hue / 6.0, 1.0), 0.0)
    return jnp.stack([hue, saturation, value], -1)


def _hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = jnp.mod(jnp.stack([5.0, 3.0, 1.0], -1) + h[..., None] * 6.0, 6.0)
    return v[..., None] - v[..., None] * s[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def jitter(image: jax.Array, params: dict[str, jax.Array], cfg: AugmentConfig, inside) -> jax.Array:
    """Brightness (+delta), contrast (x factor about each channel's mean over `inside` pixels),
    saturation (x factor) and hue (+turns) of an image [h, w, C] in [0, 1], then clipped to
    [0, 1]. Saturation and hue need RGB and leave greyscale alone."""
    if cfg.brightness > 0:
        image = image + params["brightness"]
    if cfg.contrast > 0:
        weight = inside[..., None].astype(image.dtype)
        mean = jnp.sum(image * weight, (0, 1)) / jnp.maximum(jnp.sum(weight, (0, 1)), 1.0)
        image = (image - mean) * params["contrast"] + mean
    if image.shape[-1] == 3 and (cfg.saturation > 0 or cfg.hue > 0):
        hsv = _rgb_to_hsv(jnp.clip(image, 0.0, 1.0))
        hue = jnp.mod(hsv[..., 0] + params["hue"], 1.0)
        saturation = jnp.clip(hsv[..., 1] * params["saturation"], 0.0, 1.0)
        image = _hsv_to_rgb(jnp.stack([hue, saturation, hsv[..., 2]], -1))
    return jnp.clip(image, 0.0, 1.0)


def warp(example: Batch, params: dict[str, jax.Array], cfg: AugmentConfig) -> Batch:
    """Applies one example's parameters.

    Args:
      example: {"image": uint8 or float [H, W, C] in [0, 255] (uint8) or [0, 1], "label": int
        [H, W], "size": int32 [2] (the real extent; the rest is padding)} (+ "weight" [H, W]).
      params: `sample_params`'s output (or hand-made, in tests).
      cfg: the recipe.

    Returns:
      {"image": float32 [h, w, C] normalised, "label": int32 [h, w]} (+ "weight" f32 [h, w]),
      (h, w) = cfg.crop.
    """
    size = example["size"]
    rows, cols, inside = source_grid(params, cfg, size)
    image = example["image"].astype(jnp.float32)
    if example["image"].dtype == jnp.uint8:
        image = image / 255.0
    image = _sample(image, rows, cols, size, cfg.bicubic)
    nearest_r = jnp.clip(jnp.round(rows).astype(jnp.int32), 0, size[0] - 1)
    nearest_c = jnp.clip(jnp.round(cols).astype(jnp.int32), 0, size[1] - 1)
    label = example["label"][nearest_r, nearest_c].astype(jnp.int32)
    out = {"label": jnp.where(inside, label, IGNORE_ID)}
    if "weight" in example:
        weight = example["weight"][nearest_r, nearest_c].astype(jnp.float32)
        out["weight"] = jnp.where(inside, weight, 0.0)
    if max(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) > 0:
        # Materialise the resampled image once: otherwise XLA:CPU fuses the gathers into each
        # consumer (the contrast mean and the pixels), recomputing them (5x slower here).
        image = jax.lax.optimization_barrier(image)
        image = jitter(image, params, cfg, inside)
    image = (image - jnp.asarray(cfg.mean)) / jnp.asarray(cfg.std)
    out["image"] = jnp.where(inside[..., None], image, 0.0)
    return out


def augment(batch: Batch, seed: int, cfg: AugmentConfig) -> Batch:
    """The training batch of a loaded host batch (see `jaxseg.data.loading`): every example
    warped with the parameters of its own key; "size" and "position" are consumed."""

    def one(example):
        key = example_key(seed, example["position"])
        params = sample_params(key, cfg, example["size"])
        return warp(example, params, cfg)

    return jax.vmap(one)(batch)


def make_augment(
    data_cfg: ml_collections.ConfigDict,
    *,
    seed: int,
    sharding: jax.sharding.NamedSharding,
    context: Sequence[int] = (0, 0),
):
    """The jitted `augment` of a recipe, batch in and out sharded by `sharding` (batch axis)."""
    cfg = augment_config(data_cfg, tuple(context))
    return jax.jit(
        functools.partial(augment, seed=seed, cfg=cfg),
        in_shardings=(sharding,),
        out_shardings=sharding,
    )
