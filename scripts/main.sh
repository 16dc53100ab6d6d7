#!/usr/bin/env bash
# The README's main command: installs what rmdistill needs, builds it, and runs the main manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --bin rmdistill
manifest=${1:-manifests/tldr-length-bias.toml}
./target/debug/rmdistill run "$manifest"
./target/debug/rmdistill status "$manifest"
echo "results are in .rmdistill/store; preview one with: ./target/debug/rmdistill show $manifest 'd_rho@rho=0.2,seed=0'"
