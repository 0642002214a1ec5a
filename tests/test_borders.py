"""One border rule on every path: an image smaller than the canvas is padded at the bottom and
right with 0 after normalisation (the FCN release's zero padding after mean subtraction) by the
training chain, the evaluation chain and predict.py alike, so its valid region gets the same
logits whichever path it took."""

import jax
import numpy as np

from configs.base import data_config
from jaxseg import inference, prediction, sharding, tiled_inference
from jaxseg.data import augment, loading
from jaxseg.models import build_model

HEIGHT, WIDTH = 40, 50  # -> a 64 x 64 canvas on every path (predict.py's 32 px bucket)


def test_train_eval_and_predict_pad_alike_and_give_the_same_valid_logits():
    cfg = data_config()
    cfg.crop_size = cfg.eval_pad_size = (64, 64)
    cfg.min_scale = cfg.max_scale = 1.0
    cfg.hflip = False
    cfg.brightness = cfg.contrast = cfg.saturation = cfg.hue = 0.0
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    pixels = raw.astype(np.float32) / 255
    # Training: the host pads the raw example to a fixed array, the device augmentation (here
    # without random geometry) crops 64 x 64 from it and gives every pixel past the image 0.
    loaded = {
        "image": np.pad(raw, ((0, 64 - HEIGHT), (0, 64 - WIDTH), (0, 0)))[None],
        "label": np.full((1, 64, 64), 255, np.int32),
        "size": np.array([[HEIGHT, WIDTH]], np.int32),
        "position": augment.position_words(np.array([0])),
    }
    train = np.asarray(augment.augment(loaded, 0, augment.augment_config(cfg))["image"][0])
    # Evaluation: normalised and padded on the host.
    evaluated = loading.pad_image(loading.normalize(raw, cfg.mean, cfg.std), 64, 64)

    model = build_model({"name": "unet_padded", "num_classes": 3, "base_width": 4, "depth": 2})
    variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32), train=False)
    logits_fn = jax.jit(lambda x: inference.whole_image_logits(model, variables, x))
    mesh = sharding.make_mesh()
    engine = tiled_inference.Engine.create(
        model, variables, mesh, batch_size=tiled_inference.batch_size_for(mesh, 1)
    )
    predictor = prediction.Predictor(
        predict=engine.whole.fn,
        variables=engine.whole.variables,
        mean=np.asarray(cfg.mean, np.float32),
        std=np.asarray(cfg.std, np.float32),
        channels=3,
        palette=((0, 0, 0), (1, 1, 1), (2, 2, 2)),
        bucket=prediction.BUCKET,
        step=0,
        class_names=("a", "b", "c"),
        model=model,
        engine=engine,
    )
    labels = prediction.segment_batch(predictor, [pixels])[0].labels
    # What predict.py feeds the model: the image normalised, then padded to its bucket.
    normalised = (pixels - np.float32(cfg.mean)) / np.float32(cfg.std)
    predicted = prediction.pad_to_bucket(normalised, prediction.BUCKET)[None]
    np.testing.assert_allclose(train, evaluated, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(predicted[0], train, rtol=1e-6, atol=1e-6)
    assert (train[HEIGHT:] == 0).all() and (train[:, WIDTH:] == 0).all()

    logits = [np.asarray(logits_fn(x[None]))[0, :HEIGHT, :WIDTH] for x in (train, predicted[0])]
    np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels, logits[0].argmax(-1))
    # The rule matters: the old borders (black before normalisation; a mirror) change the logits
    # of the valid region near the band.
    black = np.broadcast_to((0 - np.float32(cfg.mean)) / np.float32(cfg.std), (64, 64, 3)).copy()
    black[:HEIGHT, :WIDTH] = normalised
    mirrored = np.pad(normalised, ((0, 64 - HEIGHT), (0, 64 - WIDTH), (0, 0)), mode="reflect")
    for old in (black, mirrored):
        other = np.asarray(logits_fn(old[None]))[0, :HEIGHT, :WIDTH]
        assert np.abs(other - logits[0]).max() > 1e-3
