"""The model registry: immutable versions (:mod:`~pipeline.registry.store`), their one check before anything
points at them (:mod:`~pipeline.registry.verify`), the pointers that name them (:mod:`~pipeline.registry.pointers`:
champions; :mod:`~pipeline.registry.aliases`), what a name means (:mod:`~pipeline.registry.lookup`) and their model
cards (:mod:`~pipeline.registry.card`).

Callers use ``from pipeline import registry`` and ``registry.get(wh, "champion")``."""

from pipeline.registry.card import model_card
from pipeline.registry.lookup import get
from pipeline.registry.pointers import (CHAMPION, CHAMPIONS, champion, champions, dataset_of, move_pointer,
                                        pointer_lock, set_champion)
from pipeline.registry.store import (CHECKED_FILES, EVAL_SET, ModelVersion, eval_set_fingerprint, list_versions,
                                     open_version, publish, read_version, reserve_version, verify_files)
from pipeline.registry.verify import verify_version

__all__ = ["CHAMPION", "CHAMPIONS", "CHECKED_FILES", "EVAL_SET", "ModelVersion", "champion", "champions",
           "dataset_of", "eval_set_fingerprint", "get", "list_versions", "model_card", "move_pointer",
           "open_version", "pointer_lock", "publish", "read_version", "reserve_version", "set_champion",
           "verify_files", "verify_version"]
