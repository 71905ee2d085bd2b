"""The training domain's tables, as lineage reads them (app/models/training.py when installed).

Lineage reads `training_runs`, `model_versions`, the alias table and the per-revision `lineage` rows
directly (one join instead of a service call per row), but does not own them. These Table objects live
in their own MetaData, never in `Base.metadata`: Alembic must not create or diff them from here. When
the training tables are absent (a deployment without the training capability) every training part of
a lineage answer is empty rather than an error.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    inspect,
)
from sqlalchemy.orm import Session

from app.models.base import JSONType

_md = MetaData()

training_runs = Table(
    "training_runs", _md,
    Column("id", Uuid, primary_key=True),
    Column("snapshot_id", Uuid),
    Column("base_model", Text),
    Column("method", String(20)),
    Column("hyperparameters", JSONType),
    Column("status", String(20)),
    Column("model_name", String(200)),
    Column("created_by", String(200)),
    Column("created_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
)

model_versions = Table(
    "model_versions", _md,
    Column("id", Uuid, primary_key=True),
    Column("name", String(200)),
    Column("version", Integer),
    Column("run_id", Uuid),
    Column("status", String(20)),
    Column("artifact_uri", Text),
    Column("artifact_sha256", String(64)),
    Column("created_at", DateTime(timezone=True)),
)

model_aliases = Table(
    "model_aliases", _md,
    Column("name", String(200), primary_key=True),
    Column("alias", String(100), primary_key=True),
    Column("model_version_id", Uuid),
    Column("updated_at", DateTime(timezone=True)),
)

lineage = Table(
    "lineage", _md,
    Column("model_version_id", Uuid, primary_key=True),
    Column("example_id", Uuid, primary_key=True),
    Column("revision_id", Uuid),
    Column("run_id", Uuid),
    Column("tokens", BigInteger),
    Column("epochs", Float),
)

STANDIN = True
try:  # the training domain's own models, once they are installed: same columns, their metadata
    from app.models.training import Lineage, ModelAlias, ModelVersion, TrainingRun
except ImportError:  # pragma: no cover - a deployment without the training capability
    pass
else:
    training_runs, model_versions = TrainingRun.__table__, ModelVersion.__table__
    model_aliases, lineage = ModelAlias.__table__, Lineage.__table__
    STANDIN = False

TABLES = (training_runs, model_versions, model_aliases, lineage)

_present: dict[str, bool] = {}


def available(session: Session) -> bool:
    """True when the training tables exist in this database. Cached once true (tables are not dropped
    under a running service); a miss is re-checked, so a migration applied later is picked up."""
    bind = session.get_bind()
    key = str(bind.engine.url)
    if _present.get(key):
        return True
    names = set(inspect(session.connection()).get_table_names())
    ok = all(t.name in names for t in TABLES)
    if ok:
        _present[key] = True
    return ok
