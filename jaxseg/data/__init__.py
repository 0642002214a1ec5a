"""Input pipeline: data set specs, tfds builders we own, Grain host loading, device augmentation.

Entry points: `datasets.dataset_spec(config.data)` for metadata (num_classes, class names,
palette, channels), `loading.make_train_iterator` (loaded on the host, augmented on the devices:
`augment`), `loading.make_eval_iterator` and `loading.to_global`.
"""
