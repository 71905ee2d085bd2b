"""The one door to Presidio and spaCy: `load()` imports them with the training stack kept out.

thinc (spaCy's ML layer) and Presidio's Hugging Face recognizer import torch and transformers whenever
those are installed, as they are on a dev box with the [train] extra, only to offer backends this service
never uses (the NER models here are thinc/CPU). The API and the CPU workers must not pay for them:
seconds of start-up and hundreds of MB per process. Both libraries treat an ImportError as "not
installed", so `load()` imports them while an import finder refuses those two names, then removes it:
a process that wants torch for itself (the trainer, the test suite) still gets it.

`engine.py`, `recognizers/` and `scrub.py` import Presidio at their top, so nothing imports them before
calling `load()`: `app.pii.service` (the engine and the scrub, on first use) and the pii worker's start-up
do. This replaces a module that planted `None` in `sys.modules` as a side effect of being imported, and
that import-sorting had moved below the Presidio imports it was meant to precede, so it guarded nothing.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

TRAINING_STACK = ("torch", "transformers")
_lock = threading.Lock()


class _Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ImportError(f"{fullname} is kept out of this process while the NLP stack loads (app.pii.nlp)")


@contextmanager
def refusing(names: Sequence[str]) -> Iterator[None]:
    """While inside, `import <name>` raises ImportError for each name not imported already."""
    finder = _Refuse([n for n in names if n not in sys.modules])
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def load() -> None:
    """Import Presidio and spaCy (once per process; later calls return at once)."""
    if "presidio_analyzer" in sys.modules and "spacy" in sys.modules:
        return
    with _lock, refusing(TRAINING_STACK):
        import presidio_analyzer  # noqa: F401
        import presidio_anonymizer  # noqa: F401
        import spacy  # noqa: F401
