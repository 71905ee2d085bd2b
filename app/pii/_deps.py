"""Import Presidio and spaCy without dragging in the training stack.

thinc (spaCy's ML layer) and Presidio's optional NLP engines import torch and transformers whenever those
are installed, as they are on a dev box with the [train] extra. The API and CPU workers must never load
them (seconds of start-up and hundreds of MB per process, for nothing: the NER models here are thinc/CPU).
While these libraries are first imported, both names are made unimportable; afterwards they are put back,
so a process that wants torch for itself (the trainer, the test suite) still gets it.
"""

from __future__ import annotations

import sys

_BLOCKED = ("torch", "transformers")
_added = [name for name in _BLOCKED if name not in sys.modules]
for _name in _added:
    sys.modules[_name] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
try:
    import presidio_analyzer  # noqa: F401
    import presidio_anonymizer  # noqa: F401
    import spacy  # noqa: F401
finally:
    for _name in _added:
        if sys.modules.get(_name, 0) is None:
            del sys.modules[_name]
