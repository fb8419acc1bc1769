#!/usr/bin/env bash
# Makes, once, the Python venv that runs the AutoDMS test peer (tests/peers/dms/server.py)
# and the checker of our own OpenAPI document (tests/peers/openapi/check.py): openapi-core
# (the independent OpenAPI request validator, with jsonschema) and werkzeug, at pinned
# versions, from PyPI. Prints the venv's python on stdout (last line); everything else goes
# to stderr.
#
#   scripts/dms-venv.sh                 # -> ~/.cache/vehicle-connect/dms-venv/bin/python
#   "$(scripts/dms-venv.sh)" tests/peers/dms/server.py --port 0 --ready-file /tmp/port
#
# Idempotent and fast when done: a stamp file in the venv names the pins it was made with; a
# change of pins (or of the base Python) makes it anew. Runs at the same time wait for each
# other (flock).
#
# Env: VC_CACHE (or VC_CACHE_DIR, as scripts/build-control-plane.sh) for the cache folder;
#      VC_PYTHON, the Python (3.10+) to make the venv with (default python3).
set -euo pipefail

die() { echo "dms-venv.sh: $*" >&2; exit 1; }

# The two the peer imports, pinned exactly; the rest of what they pull in is pinned as
# constraints (what these two resolved to when the pins were set), so a new release on PyPI
# changes nothing here. A dependency missing from the list (another Python) is resolved freely.
PINS=(
  openapi-core==0.23.1
  werkzeug==3.1.9
)
CONSTRAINTS=(
  annotated-types==0.8.0
  attrs==26.1.0
  isodate==0.7.2
  jsonschema==4.26.0
  jsonschema-path==0.4.6
  jsonschema-specifications==2025.9.1
  lazy-object-proxy==1.13.0
  MarkupSafe==3.0.4
  more-itertools==11.2.1
  openapi-schema-validator==0.8.1
  openapi-spec-validator==0.8.5
  pathable==0.5.0
  pydantic==2.14.4
  pydantic-settings==2.16.3
  pydantic_core==2.50.5
  python-dotenv==1.2.4
  PyYAML==6.0.4
  referencing==0.37.0
  rfc3339-validator==0.1.4
  rpds-py==2026.9.1
  six==1.17.0
  typing-inspection==0.4.5
  typing_extensions==4.16.0
)

CACHE_ROOT="${VC_CACHE:-${VC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vehicle-connect}}"
VENV="$CACHE_ROOT/dms-venv"
PY="$VENV/bin/python"
STAMP="$VENV/.vc-dms-venv-stamp"
BASE_PYTHON="${VC_PYTHON:-python3}"

command -v "$BASE_PYTHON" >/dev/null ||
  die "no $BASE_PYTHON on PATH: the AutoDMS peer needs Python 3.10+ (set VC_PYTHON to one)"
base_version="$("$BASE_PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" ||
  die "$BASE_PYTHON does not run"
"$BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
  die "$BASE_PYTHON is Python $base_version; openapi-core 0.23 needs 3.10+ (set VC_PYTHON)"

want_stamp="$(printf '%s\n' "python $base_version" "${PINS[@]}" "${CONSTRAINTS[@]}")"
ready() {
  [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] && "$PY" -c '' 2>/dev/null
}

if ready; then
  echo "$PY"
  exit 0
fi

mkdir -p "$CACHE_ROOT" || die "cannot create $CACHE_ROOT"
if command -v flock >/dev/null; then
  exec 9>"$CACHE_ROOT/dms-venv.lock"
  flock 9
  # Another run may have made it while this one waited.
  if ready; then
    echo "$PY"
    exit 0
  fi
fi

echo "dms-venv.sh: making $VENV (Python $base_version; ${PINS[*]})" >&2
rm -rf "$VENV"
"$BASE_PYTHON" -m venv "$VENV" >&2 ||
  die "\`$BASE_PYTHON -m venv\` failed (on Debian: apt-get install python3-venv)"

LOG="$VENV/pip-install.log"
printf '%s\n' "${CONSTRAINTS[@]}" "${PINS[@]}" >"$VENV/constraints.txt"
if ! "$PY" -m pip install --disable-pip-version-check --no-input --prefer-binary \
  -c "$VENV/constraints.txt" "${PINS[@]}" >"$LOG" 2>&1; then
  tail -n 30 "$LOG" >&2
  die "pip could not install ${PINS[*]} from PyPI (log above, whole in $LOG)"
fi
"$PY" -m pip check --disable-pip-version-check >&2 || die "the venv's packages do not fit together"
"$PY" - "${PINS[@]}" <<'PYCHECK' || die "the venv does not have the pinned versions"
import sys
from importlib.metadata import version
import openapi_core.contrib.werkzeug  # noqa: F401  (what server.py uses)
import jsonschema, openapi_spec_validator, referencing  # noqa: F401,E401  (and check.py)
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    got = version(name)
    if got != want:
        sys.exit(f"{name} is {got}, not {want}")
PYCHECK

# Written last: a run stopped half-way leaves no stamp, and the next one starts over.
printf '%s\n' "$want_stamp" >"$STAMP"
echo "dms-venv.sh: done: $VENV" >&2
echo "$PY"
