#!/usr/bin/env bash
# Build (once) the throwaway environments of the peers' released packages, each as its users install it:
#   peer-rewardbench  rewardbench 0.1.4 with its own pins (transformers 4.51.0)
#   peer-openrlhf     openrlhf 0.11.2 --no-deps, its transformers pin (5.15.0) and what its reward client imports
#                     (aiohttp; sympy and pylatexenc for openrlhf.utils), plus worldpm itself: worldpm installed beside OpenRLHF
#   peer-trl          trl 1.16.0 with the newest transformers, plus worldpm itself: worldpm installed beside TRL
# torch 2.13.0 goes in first everywhere (its CPU wheel; a bare `torch` would pull a CUDA build). Usage: build_peers.sh DIR [NAME...]
# Each environment is rebuilt only when its recipe (its lines below) changed. These are never worldpm's dependencies.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=$1; shift
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(peer-rewardbench peer-openrlhf peer-trl)
mkdir -p "$dir"
torch_req=torch==2.13.0
# pip's notes on local indexes, and on the requirements `--no-deps` leaves out on purpose, are not news
quiet() { "$@" 2> >(grep -v -e '^WARNING: Location' -e 'is ignored: it is neither' -e "^ERROR: pip's dependency resolver" \
                        -e '^openrlhf .* requires .*, which is not installed' >&2); }
for name in "${names[@]}"; do
  venv="$dir/$name"
  recipe=$({ echo "$torch_req"; sed -n "/^    $name)/,/;;/p" "$0"; } | sha1sum | cut -c1-12)
  if [ -f "$venv/.built-$recipe" ]; then
    # worldpm is an editable install there: its code is live; its requirements may have changed (a no-op when satisfied)
    [ "$name" = peer-rewardbench ] || quiet "$venv/bin/pip" install -q --disable-pip-version-check -e .
    continue
  fi
  echo "interop: building $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  pip=("$venv/bin/pip" install -q --disable-pip-version-check)
  quiet "${pip[@]}" "$torch_req"
  case $name in
    peer-rewardbench)
      quiet "${pip[@]}" rewardbench==0.1.4 ;;
    peer-openrlhf)
      quiet "${pip[@]}" --no-deps openrlhf==0.11.2
      quiet "${pip[@]}" transformers==5.15.0 aiohttp sympy pylatexenc
      quiet "${pip[@]}" -e . ;;   # worldpm beside OpenRLHF's pins: pip must keep transformers 5.15.0
    peer-trl)
      quiet "${pip[@]}" trl==1.16.0 transformers
      quiet "${pip[@]}" -e . ;;
    *) echo "unknown peer $name" >&2; exit 2 ;;
  esac
  "$venv/bin/pip" freeze --disable-pip-version-check > "$venv/freeze.txt" 2>/dev/null
  touch "$venv/.built-$recipe"
done
