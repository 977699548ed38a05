#!/usr/bin/env bash
# Make .venv and install worldpm into it, torch's CPU wheel first (a bare `torch` requirement would pull a multi-GB CUDA build),
# then worldpm[all,dev] at the exact versions of constraints.txt (setup.py has ranges; CI installs this same set).
# Idempotent: installs again only when setup.py or constraints.txt changed. WORLDPM_VENV picks another location; WORLDPM_SKIP_SETUP=1 skips
# the install (a venv shared by several checkouts, whose editable install must keep pointing where it points).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${WORLDPM_SKIP_SETUP:-0}" = 1 ] && exit 0
venv=${WORLDPM_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
stamp="$venv/.worldpm-installed-$(cat setup.py constraints.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing torch (CPU wheel) and worldpm[all,dev] into $venv" >&2
  quiet() { "$@" 2> >(grep -v '^WARNING: Location' >&2); }
  quiet "$venv/bin/pip" install -q torch==2.13.0
  quiet "$venv/bin/pip" install -q -c constraints.txt -e '.[all,dev]'
  rm -f "$venv"/.worldpm-installed-*
  touch "$stamp"
fi
