"""Alembic migrations of the state database, shipped in the wheel as `syncd.migrations`.

Run them with `syncd db upgrade` (or `syncd.state.db.upgrade()`); the top-level `alembic.ini`
is for developers writing a new revision (`alembic revision --autogenerate -m "..."`).
"""
