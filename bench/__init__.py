"""The benchmark suite of voxares-syncd: `python -m bench [--quick] [--only B1,B3] [--runs 3]`.

Each benchmark drives the real code paths (jobs built by `syncd.compose` from a `Settings`
loaded the way the CLI loads it, run through `JobRunner`) against the served sandbox (a real
TCP server in its own process, latency injected there), real SQLite/PostgreSQL databases and
a real RabbitMQ, and reports its figure next to the ideal or an in-run baseline.
"""
