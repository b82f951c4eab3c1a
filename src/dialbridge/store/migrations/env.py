"""Alembic environment: dialbridge passes its engine in `config.attributes` (see store.database.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from dialbridge.store.database import migrating
from dialbridge.store.tables import metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # plain `alembic` command line: sqlalchemy.url from the ini file
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///./var/dialbridge.db")

# Several processes start at once (`serve --workers N`, or several instances on one database): hold the migration
# lock from before Alembic reads the current revision, so the others wait and then find the schema current, instead
# of running the same migration again ("table ... already exists").
with migrating(engine) as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
