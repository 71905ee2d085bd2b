"""PII engine lifecycle in Celery workers: checked once in the parent, built once per child process.

The scrub itself runs through the generic pipeline task on queue "pii" (app.pipeline.stages); nothing here
runs per task.
"""

from __future__ import annotations

import logging
import sys

from celery.signals import worker_init, worker_process_init

log = logging.getLogger(__name__)


@worker_init.connect
def _refuse_to_start_without_model_or_vault_key(**_: object) -> None:
    from app.core.config import get_settings
    from app.core.db import get_engine, session_scope
    from app.pii import nlp

    nlp.load()  # before the engine module imports Presidio: keeps torch out of the worker
    from app.pii.engine import PiiModelMissing, resolve_model_package
    from app.pii.service import startup_check
    from app.pii.vault import VaultError

    s = get_settings().pii
    try:
        if s.mode == "ner" and resolve_model_package(s.spacy_model) is None:
            raise PiiModelMissing(
                f"spaCy model {s.spacy_model!r} is not installed. Install it (`pip install --require-hashes -r "
                "requirements/spacy-model.txt`) or set PEDIGREE_PII_MODE=pattern_only explicitly."
            )
        with session_scope() as session:
            startup_check(session)
        # The pool children are forked from this process: they must not inherit its open connection.
        get_engine().dispose()
    except (PiiModelMissing, VaultError) as exc:
        log.critical("worker refuses to start: %s", exc)
        print(f"pedigree worker: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(78) from exc  # EX_CONFIG


@worker_process_init.connect
def _build_engine(**_: object) -> None:
    from app.pii.service import engine

    engine()
