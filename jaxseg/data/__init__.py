"""Input pipeline: data set specs, tfds builders we own, joint transforms, tf.data pipelines.

Entry points: `datasets.dataset_spec(config.data)` for metadata (num_classes, class names,
palette, channels), `pipeline.make_train_iterator`, `pipeline.make_eval_iterator` and
`pipeline.to_global`.
"""
