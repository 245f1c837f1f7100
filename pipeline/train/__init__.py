"""Stage 3, train: the models, the training loop, presets, the registry of versions and promotion."""
