"""The tables of the metadata store. Changing them means adding an Alembic revision."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
Id = BigInteger().with_variant(Integer(), "sqlite")

resources = Table(
    "resources",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(64), nullable=False),
    Column("name_key", String(256), nullable=False),
    Column("name", String(256), nullable=False),
    Column("arn", String(1024), nullable=False, unique=True),
    Column("status", String(64)),
    Column("parent", String(1024)),
    Column("creation_time", Float, nullable=False),
    Column("last_modified_time", Float, nullable=False),
    Column("body", Text, nullable=False),
    UniqueConstraint("kind", "name_key", name="uq_resources_kind_name"),
    Index("ix_resources_kind_created", "kind", "creation_time", "id"),
    Index("ix_resources_kind_parent", "kind", "parent"),
    # one per List* sort order (0002): a page walks its index instead of sorting the kind
    Index("ix_resources_kind_name", "kind", "name", "id"),
    Index("ix_resources_kind_status", "kind", text("coalesce(status, '')"), "id"),
    Index("ix_resources_kind_modified", "kind", "last_modified_time", "id"),
)

tags = Table(
    "tags",
    metadata,
    Column("arn", String(1024), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", String(256), nullable=False),
    Column("position", Integer, nullable=False),
)

associations = Table(
    "associations",
    metadata,
    Column("source", String(1024), primary_key=True),
    Column("destination", String(1024), primary_key=True),
    Column("kind", String(64), primary_key=True),
    Column("creation_time", Float, nullable=False),
    Index("ix_associations_destination", "destination", "kind"),
    Index("ix_associations_kind_destination", "kind", "destination"),
)

metrics = Table(
    "metrics",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("arn", String(1024), nullable=False),
    Column("name", String(255), nullable=False),
    Column("timestamp", Float, nullable=False),
    Column("step", Integer),
    Column("value", Float, nullable=False),
    Index("ix_metrics_series", "arn", "name", "timestamp"),
)
