"""jaxseg: FCN and U-Net semantic segmentation in JAX/Flax.

`jaxseg.load(workdir)` is the notebook entry point (jaxseg/segmenter.py). Importing jaxseg does
not import jax, so entry points can configure XLA first (jaxseg/backend.py).
"""


def load(workdir, checkpoint="best", **kwargs):
    """A `jaxseg.segmenter.Segmenter` for `checkpoint` ("best", "latest" or a step) of the run
    in `workdir`: `.predict(image_or_batch, mode=...)`, `.classes`, `.palette`."""
    from jaxseg.segmenter import Segmenter

    return Segmenter.load(workdir, checkpoint, **kwargs)
