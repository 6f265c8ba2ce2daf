"""Alembic environment and versions: the only way pixelgov's schema changes."""
