"""tfds builders we own: `synthetic_scenes`, `voc_sbd` (VOC2012 + SBD), `segmentation_folder`."""
