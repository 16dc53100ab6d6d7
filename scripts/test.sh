#!/usr/bin/env bash
# The README's test command: installs what the suite needs (scripts/setup.sh), then runs every test of the
# workspace — unit tests beside the code, and the integration tests in tests/ that drive the binary. --workspace also
# builds rmdistill-worker (worker/tests drive it), the binary the engine's tests run torch nodes in.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --workspace --no-fail-fast "$@"
