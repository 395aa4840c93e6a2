"""Initial schema: resources, tags, associations, metrics.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("name_key", sa.String(256), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("arn", sa.String(1024), nullable=False, unique=True),
        sa.Column("status", sa.String(64)),
        sa.Column("parent", sa.String(1024)),
        sa.Column("creation_time", sa.Float, nullable=False),
        sa.Column("last_modified_time", sa.Float, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.UniqueConstraint("kind", "name_key", name="uq_resources_kind_name"),
    )
    op.create_index("ix_resources_kind_created", "resources", ["kind", "creation_time", "id"])
    op.create_index("ix_resources_kind_parent", "resources", ["kind", "parent"])
    op.create_table(
        "tags",
        sa.Column("arn", sa.String(1024), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_table(
        "associations",
        sa.Column("source", sa.String(1024), primary_key=True),
        sa.Column("destination", sa.String(1024), primary_key=True),
        sa.Column("kind", sa.String(64), primary_key=True),
        sa.Column("creation_time", sa.Float, nullable=False),
    )
    op.create_index("ix_associations_destination", "associations", ["destination", "kind"])
    op.create_table(
        "metrics",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("arn", sa.String(1024), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("timestamp", sa.Float, nullable=False),
        sa.Column("step", sa.Integer),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index("ix_metrics_series", "metrics", ["arn", "name", "timestamp"])


def downgrade() -> None:
    for table in ("metrics", "associations", "tags", "resources"):
        op.drop_table(table)
