"""The patient push job: source rows → change detection → Voxares upserts → local mirror.

`plan.py` decides what to do with one row (pure), `api_errors.py` classifies what the API
answered (pure), `store.py` holds every read and write of the state database for one run,
and `push.py` streams the source through them batch by batch.
"""
