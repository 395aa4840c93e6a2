"""Indexes for every sort order of the List* operations, and for list members of an association.

A list sorted by name, status or last-modified time walks an index from its first row to its
page's last, as one sorted by creation time always did, instead of sorting every row of the kind;
so a page over 50,000 rows costs what a page over 50 does.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_resources_kind_name", "resources", ["kind", "name", "id"])
    op.create_index(
        "ix_resources_kind_status", "resources", ["kind", sa.text("coalesce(status, '')"), "id"]
    )
    op.create_index("ix_resources_kind_modified", "resources", ["kind", "last_modified_time", "id"])
    op.create_index("ix_associations_kind_destination", "associations", ["kind", "destination"])


def downgrade() -> None:
    op.drop_index("ix_associations_kind_destination", "associations")
    for name in (
        "ix_resources_kind_modified",
        "ix_resources_kind_status",
        "ix_resources_kind_name",
    ):
        op.drop_index(name, "resources")
