"""The patient push job: source rows → change detection → Voxares upserts → local mirror.

`plan.py` decides what to do with one row (pure), `payload.py` normalises a row and builds
its request body (pure, shared with the HL7 apply job), `api_errors.py` classifies what the
API answered (pure), `store.py` holds every read and write of the state database for one
run, and `push.py` streams the source through them batch by batch.
"""
