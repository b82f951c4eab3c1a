"""Alembic environment: dialbridge passes its engine in `config.attributes` (see store.database.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from dialbridge.store.tables import metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # plain `alembic` command line: sqlalchemy.url from the ini file
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///./var/dialbridge.db")

with engine.connect() as connection:
    if connection.dialect.name == "sqlite":
        # Several processes start at once (`serve --workers N`, or two instances on one file): take SQLite's write
        # lock before Alembic reads the current revision, so the others wait (busy_timeout) and then find the
        # schema current, instead of running the same migration again ("table ... already exists").
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():  # the transaction begun above is ours to end
        connection.commit()
