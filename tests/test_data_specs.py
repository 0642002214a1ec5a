"""Data set specs: metadata is consistent, and tfds-hosted sets load through mock data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from configs.base import data_config
from jaxseg.data import datasets, loading

HOSTED = {  # name -> (eval split, eval pad size, mock examples); 1 full-size Cityscapes is slow
    "oxford_iiit_pet": ("test", (10, 10), 2),
    "ade20k": ("test", (10, 10), 2),
    "cityscapes": ("validation", (1024, 2048), 1),
}
CROP = (8, 8)


def _consistent_source(num_examples):
    """A mock `as_data_source`: decoded random examples whose image and mask sizes agree.

    tfds's default mock draws every unknown dimension independently, so image and mask sizes
    would differ; `constant_dynamic_shape` makes them all 10. The examples are the generator's
    numpy arrays, which is what a data source decodes to.
    """

    def as_data_source(builder, split, **kwargs):
        del split, kwargs
        features = builder.info.features
        generator = mocking.RandomFakeGenerator(features, num_examples, constant_dynamic_shape=True)
        return [generator[i] for i in range(num_examples)]

    return as_data_source


def test_get_spec_error_lists_valid_names():
    with pytest.raises(ValueError, match="valid names.*cityscapes.*synthetic_scenes"):
        datasets.get_spec("camvid")


@pytest.mark.parametrize("name", sorted(datasets.DATASETS))
def test_spec_metadata_is_consistent(name):
    spec = datasets.DATASETS[name]
    assert spec.name == name
    if name != "image_folder":  # its classes come from the config
        assert len(spec.palette) == spec.num_classes > 1
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in spec.palette)
    if spec.label_map is not None:
        assert len(spec.label_map) == 256
        assert set(spec.label_map) <= set(range(spec.num_classes)) | {255}
        assert set(range(spec.num_classes)) <= set(spec.label_map)  # every class reachable


def test_label_maps_match_the_papers_conventions():
    city = datasets.DATASETS["cityscapes"].label_map
    assert (city[7], city[8], city[26], city[33]) == (0, 1, 13, 18)  # road, sidewalk, car, bike
    assert city[0] == city[6] == city[34] == 255  # unlabeled, ground, out of range
    ade = datasets.DATASETS["ade20k"].label_map
    assert ade[0] == 255 and ade[1] == 0 and ade[150] == 149 and ade[151] == 255
    pet = datasets.DATASETS["oxford_iiit_pet"].label_map
    assert (pet[1], pet[2], pet[3], pet[0]) == (1, 0, 2, 255)


def test_folder_spec_takes_classes_from_the_config():
    cfg = data_config()
    cfg.name = "image_folder"
    cfg.folder.class_names = ("membrane", "cell")
    cfg.folder.channels = 1
    spec = datasets.dataset_spec(cfg)
    assert spec.num_classes == 2 and spec.class_names == ("membrane", "cell")
    assert spec.image_channels == 1 and len(spec.palette) >= 2


@pytest.mark.parametrize("name", sorted(HOSTED))
def test_hosted_spec_loads_through_mock_data(name):
    spec = datasets.get_spec(name)
    eval_split, pad, count = HOSTED[name]
    cfg = data_config()
    cfg.name = name
    cfg.crop_size = CROP
    cfg.eval_split = eval_split
    cfg.eval_pad_size = pad
    source = _consistent_source(count)
    with tfds.testing.mock_data(num_examples=count, as_data_source_fn=source):
        batch = next(loading.make_train_iterator(cfg, global_batch_size=8, seed=0))
        assert batch["image"].shape == (8, *CROP, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (8, *CROP) and batch["label"].dtype == np.int32
        assert set(np.unique(batch["label"])) <= set(range(spec.num_classes)) | {255}

        (batch,) = list(loading.make_eval_iterator(cfg, global_batch_size=2))
        records = source(spec.make_builder(cfg), eval_split)
    assert batch["valid"].tolist() == [True] * count + [False] * (2 - count)
    table = np.asarray(spec.label_map)
    for label, record in zip(batch["label"], records):
        expected = table[record[spec.label_key][..., 0]]  # the documented raw -> class mapping
        height, width = expected.shape
        np.testing.assert_array_equal(label[:height, :width], expected)
        assert (label[height:] == 255).all() and (label[:, width:] == 255).all()


def test_hosted_example_with_mismatched_mask_is_named():
    # tfds's default mock gives image and mask independent random sizes: a corrupt example.
    # USE_CODE: splits from the code, not from tfds's packaged metadata files, which are read
    # differently with and without TensorFlow installed (without it the mock's splits came back
    # empty on 2026-12-03).
    cfg = data_config()
    cfg.name = "oxford_iiit_pet"
    cfg.crop_size = (8, 8)
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        iterator = loading.host_batches(cfg, global_batch_size=2, seed=0)
        with pytest.raises(
            ValueError, match=r"oxford_iiit_pet/train example index \d.*image and mask sizes differ"
        ):
            next(iterator)
