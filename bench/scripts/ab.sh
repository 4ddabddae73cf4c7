#!/usr/bin/env bash
# Side-by-side timing of two kiln builds on one node each (docs/benchmarks.md, "side by side"):
#   bench/scripts/ab.sh BEFORE_BIN AFTER_BIN [PAIRS] [SECONDS]
# For each pair (the later half in reverse order), each build starts on a fresh data folder
# (auth off, default config), is loaded with 2,000 Patients and 10,000 Observations by POST
# (transaction bundles of 100), then wrk runs 64 connections for SECONDS each: reads by id,
# a family search, creates. Prints one line per run and the medians. Needs wrk and python3.
set -euo pipefail
before=$1 after=$2 pairs=${3:-4} secs=${4:-8}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
here=$(cd "$(dirname "$0")" && pwd)

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_one() { # BIN LABEL
    local bin=$1 label=$2 p dir
    p=$(port)
    dir="$work/$label-$RANDOM"
    "$bin" serve --data-dir "$dir" --listen "127.0.0.1:$p" > "$dir.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$p/_health" > /dev/null && break; sleep 0.1; done
    python3 "$here/ab_load.py" "http://127.0.0.1:$p" "$work/ids-$p.lua"
    local r s c
    r=$(wrk -t2 -c64 -d"${secs}s" -s "$work/ids-$p.lua" "http://127.0.0.1:$p" | awk '/Requests\/sec/ {print int($2)}')
    s=$(wrk -t2 -c64 -d"${secs}s" "http://127.0.0.1:$p/Patient?family=F17" | awk '/Requests\/sec/ {print int($2)}')
    c=$(wrk -t2 -c64 -d"${secs}s" -s "$here/ab_create.lua" "http://127.0.0.1:$p" | awk '/Requests\/sec/ {print int($2)}')
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    echo "$label $r $s $c" | tee -a "$work/results"
}

for i in $(seq 1 "$pairs"); do
    if (( i * 2 <= pairs )); then run_one "$before" before; run_one "$after" after
    else run_one "$after" after; run_one "$before" before; fi
done
python3 - "$work/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {b: [statistics.median(int(r[k]) for r in rows if r[0] == b) for k in (1, 2, 3)] for b in ("before", "after")}
for name, k in (("reads/s", 0), ("search/s", 1), ("creates/s", 2)):
    print(f"median {name}: after {med['after'][k]:,.0f} / before {med['before'][k]:,.0f} = {med['after'][k] / med['before'][k]:.2f}")
EOF
