"""Alembic migrations shipped inside the package, applied when a store opens.

A database written by a newer Salvia (a revision this code does not know) is refused rather than
guessed at.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).with_name("migrations")


class StaleSchemaError(RuntimeError):
    pass


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def upgrade_to_head(engine: Engine) -> None:
    config = _config()
    known = {revision.revision for revision in ScriptDirectory.from_config(config).walk_revisions()}
    with engine.begin() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        if current is not None and current not in known:
            raise StaleSchemaError(
                f"the database is at schema revision {current}, which this Salvia does not know; "
                "it was written by a newer version"
            )
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
