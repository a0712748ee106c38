"""Alembic revisions of the store's schema; :mod:`gateway.schema` runs them."""
