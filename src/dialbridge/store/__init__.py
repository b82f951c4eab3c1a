"""Persistence: SQLAlchemy Core tables, Alembic migrations, and the one `Store` that reads and writes them."""
