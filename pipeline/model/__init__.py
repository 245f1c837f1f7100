"""The model itself, shared by training and inference: the network (:mod:`~pipeline.model.network`), its weights
on disk, the device it runs on, coverage, calibration, the int8 transform and the score profile."""
