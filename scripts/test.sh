#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite. Extra arguments go to pytest (e.g. scripts/test.sh -k chat_format).
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh || exit 1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
"${WORLDPM_VENV:-.venv}/bin/python" -m pytest tests "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "test.sh: pytest collected no tests: that is a failure" >&2; exit 1; fi
exit $rc
