"""One border rule on every path: an image smaller than the canvas is padded at the bottom and
right with 0 after normalisation (the FCN release's zero padding after mean subtraction) by the
training chain, the evaluation chain and predict.py alike, so its valid region gets the same
logits whichever path it took."""

import jax
import numpy as np
import tensorflow as tf

from configs.default import data_config
from jaxseg import inference, prediction, sharding, tiled_inference
from jaxseg.data import transforms
from jaxseg.models import build_model

HEIGHT, WIDTH = 40, 50  # -> a 64 x 64 canvas on every path (predict.py's 32 px bucket)


def test_train_eval_and_predict_pad_alike_and_give_the_same_valid_logits():
    cfg = data_config()
    cfg.crop_size = cfg.eval_pad_size = (64, 64)
    cfg.min_scale = cfg.max_scale = 1.0
    cfg.hflip = False
    cfg.brightness = cfg.contrast = cfg.saturation = cfg.hue = 0.0
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3)).astype(np.float32) / 255
    example = {
        "image": tf.constant(pixels),
        "label": tf.zeros([HEIGHT, WIDTH], tf.int32),
    }
    seed = tf.constant([0, 0], tf.int64)
    train = transforms.apply(transforms.train_transforms(cfg), example, seed)["image"].numpy()
    evaluated = transforms.apply(transforms.eval_transforms(cfg), example, seed)["image"].numpy()

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
    labels = prediction.predict_image(predictor, pixels)
    # What predict.py feeds the model: the image normalised, then padded to its bucket.
    normalised = (pixels - np.float32(cfg.mean)) / np.float32(cfg.std)
    predicted = prediction.pad_to_bucket(normalised, prediction.BUCKET)[None]
    np.testing.assert_array_equal(train, evaluated)
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
