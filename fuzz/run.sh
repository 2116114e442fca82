#!/usr/bin/env bash
# Runs every fuzz target for SECONDS seconds each (default 7: CI's bounded
# run; use e.g. 3600 for a long campaign). Needs the `fuzz` extra
# (pip install ".[fuzz]"). New inputs that grow coverage go to a scratch copy
# of the corpus; a finding stops the target and leaves crash-* in fuzz/out/.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-7}"
mkdir -p out
for target in load_model table idx; do
  work="out/corpus_$target"
  rm -rf "$work" && mkdir -p "$work"
  cp corpus/"$target"/* "$work"/
  echo "fuzz_$target: ${SECONDS_EACH}s"
  python "fuzz_$target.py" -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 -timeout=20 \
    -artifact_prefix=out/ "$work" 2>&1 | tail -n 3
done
