#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: venv, packages, local servers (started by the tests).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test || exit 1
bash scripts/install_browser.sh   # Debian chromium for tests/test_browser.py (root only; never fails the run)
.venv/bin/python -m pytest -q -rs -p no:valkey "$@"
code=$?
if [ "$code" = 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$code"
