"""`python -m syncd.sandbox serve ...`: run the sandbox (what `ServedSandbox` starts).

The project CLI (`syncd sandbox serve`) calls `syncd.sandbox.server.serve` directly; this
entry point exists so tests and benchmarks can run the sandbox as a separate process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from syncd.sandbox.faults import FaultConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m syncd.sandbox")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the Voxares sandbox over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--activity-rate", type=float, default=0.0, help="events per second")
    serve.add_argument("--persist-path", type=Path, default=None, help="SQLite snapshot file")
    faults = serve.add_mutually_exclusive_group()
    faults.add_argument("--faults-json", default=None, help="a FaultConfig as JSON")
    faults.add_argument("--faults-file", type=Path, default=None, help="a FaultConfig JSON file")
    serve.add_argument("--log-level", default="warning")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and serve; the exit code."""
    args = _parser().parse_args(argv)
    raw = args.faults_file.read_text() if args.faults_file else args.faults_json
    try:
        faults = FaultConfig.model_validate_json(raw) if raw else None
    except ValidationError as exc:
        print(f"invalid faults: {exc.error_count()} error(s)\n{exc}", file=sys.stderr)
        return 2
    from syncd.sandbox.server import serve

    serve(
        args.host,
        args.port,
        seed=args.seed,
        faults=faults,
        activity_rate=args.activity_rate,
        persist_path=args.persist_path,
        log_level=args.log_level,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
