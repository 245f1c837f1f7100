"""Serving a registered model: the predictor (text in, calibrated scores out) and its n-gram fast path."""
