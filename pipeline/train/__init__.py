"""Stage 3, train: the model (``model``), its training loop (``loop``, with ``config``, ``loader``, ``device``,
``checkpoint``), presets, the run directory (``rundir``), the registry of versions, promotion, the predictor,
and the stage's job (``job``: prepare -> train -> register -> promote)."""
