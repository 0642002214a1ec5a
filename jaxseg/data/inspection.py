"""What a configured data set holds, before any training: counts, sizes, class pixels, examples.

The most common failure with one's own data is a label-encoding mistake (0/255 binary masks read
as class ids, a void id that was meant as ignore, RGB colours instead of ids, an off-by-one
class count). `inspect_split` reads a split through the same decoding as training and evaluation
(label maps included) and counts what the model would be trained on, so such mistakes show in
seconds: classes that never occur, ids outside the class range, a large ignore fraction.
Used by `python -m jaxseg.data.inspect`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from jaxseg.data import loading
from jaxseg.labels import IGNORE_ID

_RAW_BINS = 257  # label values 0..255, and one bin for anything larger (16-bit masks)


def inspect_split(
    data_cfg: ml_collections.ConfigDict,
    split: str,
    *,
    key: str,
    max_examples: int = 0,
    num_shown: int = 4,
) -> dict:
    """Statistics of one split as the loader decodes it.

    Args:
      data_cfg: `config.data`.
      split: split name (tfds slicing allowed).
      key: the config key naming the split (for errors), e.g. "config.data.train_split".
      max_examples: read only the first this many examples; 0 = all.
      num_shown: how many of the first examples to keep for the examples figure.

    Returns:
      {"split", "num_examples", "height": [min, max], "width": [min, max], "channels",
      "class_names", "class_pixels": [C] ints, "class_fraction": [C] (of all pixels),
      "ignore_pixels", "ignore_fraction", "total_pixels", "absent_classes": [names],
      "invalid_ids": {id: pixels} (neither a class id nor 255; 256 means "> 255"),
      "examples": [(image uint8 [H, W, C], label int32 [H, W]), ...] (not JSON)}.
    """
    spec, count, examples = loading.decoded_examples(
        data_cfg, split, key=key, max_examples=max_examples
    )
    counts = np.zeros(_RAW_BINS, np.int64)
    heights, widths, shown = [], [], []
    for example in examples:
        label = example["label"]
        heights.append(int(label.shape[0]))
        widths.append(int(label.shape[1]))
        clipped = np.clip(label.reshape(-1), 0, _RAW_BINS - 1)
        counts += np.bincount(clipped, minlength=_RAW_BINS)
        if len(shown) < num_shown:
            shown.append((example["image"], label.astype(np.int32)))
    c = spec.num_classes
    total = int(counts.sum())
    class_pixels = counts[:c]
    invalid = {int(v): int(counts[v]) for v in np.flatnonzero(counts) if c <= v != IGNORE_ID}
    return {
        "split": split,
        "num_examples": count,
        "height": [min(heights), max(heights)],
        "width": [min(widths), max(widths)],
        "channels": spec.image_channels,
        "class_names": list(spec.class_names),
        "class_pixels": class_pixels.tolist(),
        "class_fraction": (class_pixels / max(total, 1)).tolist(),
        "ignore_pixels": int(counts[IGNORE_ID]),
        "ignore_fraction": float(counts[IGNORE_ID] / max(total, 1)),
        "total_pixels": total,
        "absent_classes": [n for n, p in zip(spec.class_names, class_pixels) if p == 0],
        "invalid_ids": invalid,
        "palette": [list(p) for p in spec.palette],
        "examples": shown,
    }


def format_report(stats: dict, data_name: str) -> str:
    """A human-readable text block for one split's `inspect_split` result."""
    lines = [
        f"{data_name} / {stats['split']}: {stats['num_examples']} examples, "
        f"height {stats['height'][0]}..{stats['height'][1]} px, "
        f"width {stats['width'][0]}..{stats['width'][1]} px, {stats['channels']} channel(s)",
        f"  {'id':>3}  {'class':<24} {'pixels':>14} {'share':>8}",
    ]
    for i, (name, pixels, share) in enumerate(
        zip(stats["class_names"], stats["class_pixels"], stats["class_fraction"], strict=True)
    ):
        lines.append(f"  {i:>3}  {name:<24} {pixels:>14,} {share:>8.2%}")
    lines.append(
        f"  {IGNORE_ID:>3}  {'(ignore)':<24} {stats['ignore_pixels']:>14,} "
        f"{stats['ignore_fraction']:>8.2%}"
    )
    present = [n for n, p in zip(stats["class_names"], stats["class_pixels"], strict=True) if p]
    if len(present) <= 1:
        # Training on it drives the loss to 0 by predicting one class everywhere; its mIoU
        # means nothing.
        lines.append(
            f"  WARNING: only {repr(present[0]) if present else 'no class'} of the "
            f"{len(stats['class_names'])} classes has pixels in this split: the model cannot "
            "learn to tell classes apart from it. Check the masks' encoding (image_folder: "
            "data.folder.mask_format / id_map / ignore_ids / class_names)."
        )
    if stats["absent_classes"]:
        lines.append(f"  WARNING: classes that never occur: {', '.join(stats['absent_classes'])}")
    if stats["invalid_ids"]:
        shown = ", ".join(
            f"{'>255' if v == _RAW_BINS - 1 else v}: {n:,} px"
            for v, n in stats["invalid_ids"].items()
        )
        lines.append(
            f"  ERROR: label ids outside 0..{len(stats['class_names']) - 1} and {IGNORE_ID}: "
            f"{shown}. Training would stop on them: fix the masks, the class list, or map the "
            "ids (image_folder: data.folder.ignore_ids / data.folder.id_map)."
        )
    if stats["ignore_fraction"] > 0.5:
        lines.append(
            f"  WARNING: {stats['ignore_fraction']:.0%} of all pixels are ignore ({IGNORE_ID}): "
            "are 0/255 binary masks or a void colour being read as ignore?"
        )
    return "\n".join(lines)


def inspect_data(
    config: ml_collections.ConfigDict,
    output_dir: str,
    *,
    max_examples: int = 0,
    num_shown: int = 4,
    splits: Sequence[tuple[str, str]] | None = None,
) -> dict[str, dict]:
    """`inspect.py`'s one call: prints each split's report; writes stats.json and, per split,
    examples_<split>.png (image | mask | overlay, with a class legend) into `output_dir`.

    Args:
      config: a full config (its `data` field is inspected).
      output_dir: folder for the files (created).
      max_examples: per split, 0 = all.
      num_shown: examples per split in the PNG.
      splits: (config key, split) pairs; default: the train and eval splits of `config.data`.

    Returns:
      {split: stats without the examples}.
    """
    from jaxseg import visualize  # matplotlib: only for the figure

    data = config.data
    if splits is None:
        splits = [
            ("config.data.train_split", data.train_split),
            ("config.data.eval_split", data.eval_split),
        ]
    os.makedirs(output_dir, exist_ok=True)
    result = {}
    for key, split in splits:
        stats = inspect_split(data, split, key=key, max_examples=max_examples, num_shown=num_shown)
        print(format_report(stats, data.name), flush=True)
        pad = tuple(int(v) for v in data.eval_pad_size)
        largest = (stats["height"][1], stats["width"][1])
        if largest[0] > pad[0] or largest[1] > pad[1]:
            need = (max(largest[0], pad[0]), max(largest[1], pad[1]))
            print(
                f"  ERROR: config.data.eval_pad_size = {pad} is smaller than the largest "
                f"example ({largest[0]} x {largest[1]} px): training would stop before its "
                f"first step; set it to at least {need}",
                flush=True,
            )
        examples = stats.pop("examples")
        c = len(stats["class_names"])
        images = [image for image, _ in examples]
        # Ids no class has are drawn as ignore; the report names them.
        labels = [np.where(label < c, label, IGNORE_ID) for _, label in examples]
        safe = "".join(ch if ch.isalnum() else "_" for ch in split).strip("_")
        path = os.path.join(output_dir, f"examples_{safe}.png")
        visualize.save_examples_grid(images, labels, stats["palette"], stats["class_names"], path)
        print(f"  examples: {path}", flush=True)
        result[split] = stats
    with open(os.path.join(output_dir, "stats.json"), "w") as f:
        json.dump({"data": data.name, "splits": result}, f, indent=2)
    return result
