#!/usr/bin/env bash
# The README's test command: installs what the suite needs (scripts/setup.sh --tests: the Python side and the Debian
# packages the tests use), serially and before any test starts, then runs every test of the workspace — unit tests
# beside the code, and the integration tests in tests/ that drive the binary. --workspace also builds
# rmdistill-worker (worker/tests drive it), the binary the engine's tests run torch nodes in. Then the GPU check's CPU
# mode (scripts/gpu/check.sh --cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --tests
cargo test --workspace --no-fail-fast "$@"
# The GPU check in its CPU mode (scripts/gpu/README.md), on the debug binaries the suite just built: a tiny model, ~1 min.
scripts/gpu/check.sh --cpu
