#!/usr/bin/env bash
# The scale run of issue #16 on this machine, end to end:
#   1. `kiln cluster up` (3 nodes) in a fresh folder;
#   2. `kiln-bench scale`: the generated data set loaded by transaction Bundles through the leader,
#      then the scenarios (mixed, read, search, count, create; creates also via a follower), RSS
#      of every node sampled each second, data folders measured;
#   3. restart of a follower with the data: seconds from start to the first successful read;
#   4. `kiln storage` on that follower while it is stopped (where the bytes go);
#   5. the cluster is stopped and (unless KEEP=1) its folder removed.
# Usage: bench/scripts/scale.sh KILN KILN_BENCH OUT_DIR [PATIENTS]   (release builds)
#   env: PORT (default 18400), DATA (default a new folder under /tmp), DURATION (seconds per
#   scenario, default 15), CLIENTS (default 64), KEEP=1 keeps the data folder.
set -euo pipefail
kiln=$(realpath "$1"); bench=$(realpath "$2"); out=$3; patients=${4:-20000}
port=${PORT:-18400}; admin=$((port + 100))
data=${DATA:-$(mktemp -d /tmp/kiln-scale-XXXXXX)}
mkdir -p "$out"; out=$(realpath "$out")
echo "data folder: $data; results: $out"

"$kiln" cluster up --data-dir "$data" --base-port "$port" > "$out/cluster.log" 2>&1 &
up=$!
cleanup() {
    kill "$up" 2>/dev/null || true
    wait "$up" 2>/dev/null || true
    pkill -f "serve --config $data/node" 2>/dev/null || true
    while pgrep -f "serve --config $data/node" > /dev/null; do sleep 0.2; done
    [ "${KEEP:-0}" = 1 ] || rm -rf "$data"
}
trap cleanup EXIT

status() { curl -sf "http://127.0.0.1:$1/_cluster/status"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin).get(\"$1\") or 0)"; }
leader=""
for _ in $(seq 120); do
    if s=$(status "$admin") && [ "$(field leader_id <<< "$s")" != 0 ]; then leader=$(field leader_id <<< "$s"); break; fi
    sleep 0.5
done
[ -n "$leader" ] || { echo "no leader"; exit 1; }
follower=$(( leader % 3 + 1 ))
pid_of() { pgrep -f "serve --config $data/node$1.toml" | head -1; }
pids=""; dirs=""
for i in 1 2 3; do pids+="node$i=$(pid_of $i),"; dirs+="node$i=$data/node$i,"; done
echo "leader node$leader, follower node$follower; pids $pids"

"$bench" scale --base "http://127.0.0.1:$((port + leader - 1))" --follower "http://127.0.0.1:$((port + follower - 1))" \
    --patients "$patients" --clients "${CLIENTS:-64}" --duration-secs "${DURATION:-15}" \
    --pids "${pids%,}" --data-dirs "${dirs%,}" --out "$out" | tee "$out/scale-stdout.md"

# Restart of a follower holding the data: stop it, measure its folder, start it, time to serving.
fpid=$(pid_of "$follower")
kill "$fpid"; while kill -0 "$fpid" 2>/dev/null; do sleep 0.1; done
"$kiln" storage --data-dir "$data/node$follower" > "$out/storage-node$follower.txt"
start=$(date +%s.%N)
"$kiln" serve --config "$data/node$follower.toml" > "$out/restart-node$follower.log" 2>&1 &
url="http://127.0.0.1:$((port + follower - 1))/Patient/pat-0"
deadline=$(( $(date +%s) + 300 ))
until curl -sf -o /dev/null "$url"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "node$follower did not serve within 300 s: $out/restart-node$follower.log"; exit 1; }
    sleep 0.05
done
end=$(date +%s.%N)
python3 -c "print(f'restart of node$follower to its first served read: {$end - $start:.2f} s')" | tee "$out/restart.txt"
echo "RSS after restart: $(ps -o rss= -p "$(pid_of "$follower")") KiB" | tee -a "$out/restart.txt"
cat "$out/storage-node$follower.txt"
