#!/usr/bin/env bash
# CPU time of a kiln node per create (docs/benchmarks.md): cpu_per_create.sh BIN LABEL. Starts BIN on a
# fresh folder, loads the ab.sh data set, runs wrk creates for 8 s, prints the node's utime + stime
# (from /proc/PID/stat) divided by the creates served.
bin=$1 label=$2
p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
d=$(mktemp -d)
"$bin" serve --data-dir "$d/data" --listen "127.0.0.1:$p" > "$d/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$p/_health" > /dev/null && break; sleep 0.1; done
python3 $(dirname "$0")/ab_load.py "http://127.0.0.1:$p" "$d/ids.lua"
cpu() { awk '{print $14+$15}' /proc/$pid/stat; }
c0=$(cpu)
n=$(wrk -t2 -c64 -d8s -s $(dirname "$0")/ab_create.lua "http://127.0.0.1:$p" | awk '/requests in/ {print $1}')
c1=$(cpu)
kill $pid; wait $pid 2>/dev/null
rm -rf "$d"
python3 -c "print('$label', $n, 'creates', round(($c1-$c0)*10/$n, 3), 'ms CPU each')"
