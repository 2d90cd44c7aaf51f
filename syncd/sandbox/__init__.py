"""The Voxares sandbox: a faithful, fault-injectable emulator of the integration API.

- `state.Sandbox`: all state and logic, usable directly by tests.
- `faults.FaultConfig`: what goes wrong, and how often (all off by default).
- `app.create_app`: the Starlette app (contract routes, `/_sandbox` admin, OpenAPI).
- `server.serve` / `server.ServedSandbox`: uvicorn, in this process or as a subprocess.

Submodules are imported on use, so `import syncd.sandbox` stays cheap.
"""

from __future__ import annotations

from syncd.sandbox.seed import DEMO_API_KEY

__all__ = ["DEMO_API_KEY"]
