#!/usr/bin/env bash
# The README's main command: installs what rmdistill needs, builds it, runs the embedded default experiment
# (manifests/synthetic-default.toml: 7 rho × 6 methods × 3 seeds on the synthetic task) and writes its report.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# both binaries: rmdistill and the worker it runs stages on libtorch in (rmdistill-worker, next to it)
cargo build --bins
manifest=${1:-manifests/synthetic-default.toml}
./target/debug/rmdistill run "$manifest"
if ./target/debug/rmdistill node list "$manifest" --json | grep -q '"kind": "report"'; then
  report=$(./target/debug/rmdistill report "$manifest" -o rmdistill-report)
  echo "report: $report (figures beside it)"
fi
