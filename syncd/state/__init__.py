"""The state database: schema (`models`), engine and migrations (`db`), per-job locks
(`locks`) and the record of job runs and the audit trail (`runs`).

Import from the submodules; this package re-exports nothing, so that importing the models
does not pull in Alembic.
"""
