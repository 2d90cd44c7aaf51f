#!/bin/sh
# The container image's entrypoint (deploy/README.md, "Install with Docker").
#
# `run` migrates the state database first, as the systemd unit's ExecStartPre does: a new
# container comes up on an empty volume, and a newer image migrates its volume on start.
# Any other command (status, quarantine list, db upgrade, doctor, ...) runs as given, so
# `docker run --rm ... voxares-syncd status --config ...` works as documented.
#
# `exec` replaces this shell with syncd, so `docker stop`'s SIGTERM reaches the daemon, which
# finishes its runs in flight and exits.
set -eu
if [ "${1:-}" = "syncd" ]; then
  shift # `docker run IMAGE syncd status ...` means the same as `docker run IMAGE status ...`
fi
if [ "${1:-}" = "run" ]; then
  shift
  # `run` and `db upgrade` take the same option, --config.
  syncd db upgrade "$@"
  exec syncd run "$@"
fi
exec syncd "$@"
