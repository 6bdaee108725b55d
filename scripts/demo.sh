#!/usr/bin/env bash
# Set up (venv + packages, no root needed) and run the demo incident end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
exec .venv/bin/pyx demo --dir "${PYX_DEMO_DIR:-pyx-demo}" "$@"
