#!/usr/bin/env python3
"""Cluster measurements on real `kiln serve` processes (release build recommended).

  failover  --runs N     median time from kill -9 of the leader to the first acknowledged write
                         on a surviving node, with a client writing continuously (default timers)
  snapshot  --resources N  time for a node that was down while N resources were written (log
                         compacted) to catch up by snapshot: restart -> same applied index + digest

Usage: bench/scripts/cluster.py --kiln target/release/kiln failover --runs 5
       bench/scripts/cluster.py --kiln target/release/kiln snapshot --resources 20000
Only the Python standard library is used.
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time
import urllib.request, urllib.error

from common import free_ports


def http(method, url, body=None, timeout=10, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/fhir+json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception:
        return 0, b""


class Cluster:
    def __init__(self, kiln, n=3, keep_entries=10000):
        self.kiln, self.n, self.dir = kiln, n, tempfile.mkdtemp(prefix="kiln-bench-cluster-")
        ports = free_ports(3 * n)
        self.http = ports[:n]
        self.raft = ports[n:2 * n]
        self.admin = ports[2 * n:]
        peers = "".join(
            f'[[cluster.peers]]\nid = {i + 1}\nraft_addr = "127.0.0.1:{self.raft[i]}"\nhttp_url = "http://127.0.0.1:{self.http[i]}"\n'
            f'admin_url = "http://127.0.0.1:{self.admin[i]}"\n\n'
            for i in range(n))
        self.procs = {}
        for i in range(n):
            with open(self.cfg(i + 1), "w") as f:
                f.write(f'node_id = {i + 1}\ndata_dir = "{self.dir}/node{i + 1}"\nlisten = "127.0.0.1:{self.http[i]}"\n'
                        f'admin_listen = "127.0.0.1:{self.admin[i]}"\n'
                        f'[raft]\nlog_keep_entries = {keep_entries}\n'
                        f'[cluster]\nraft_listen = "127.0.0.1:{self.raft[i]}"\n{peers}')
        for i in range(1, n + 1):
            self.start(i)

    def cfg(self, i):
        return f"{self.dir}/node{i}.toml"

    def base(self, i):
        return f"http://127.0.0.1:{self.http[i - 1]}"

    def start(self, i):
        p = subprocess.Popen([self.kiln, "serve", "--config", self.cfg(i)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "error"})
        line = p.stdout.readline().decode()
        assert line.startswith("Kiln listening on"), line
        self.procs[i] = p

    def kill9(self, i):
        p = self.procs.pop(i)
        p.kill()
        p.wait()

    def status(self, i):
        code, body = http("GET", self.base(i) + "/_cluster/status", timeout=2)
        return json.loads(body) if code == 200 else None

    def leader(self, among=None, timeout=30):
        among = among or list(self.procs)
        end = time.time() + timeout
        while time.time() < end:
            ls = [(self.status(i) or {}).get("leader_id", 0) for i in among]
            if ls and ls[0] and all(x == ls[0] for x in ls) and ls[0] in among:
                return ls[0]
            time.sleep(0.05)
        raise RuntimeError("no leader")

    def digest(self, i):
        # The digest is on the operator API (admin_listen), not the FHIR port.
        code, body = http("GET", f"http://127.0.0.1:{self.admin[i - 1]}/_cluster/digest", timeout=60)
        return json.loads(body) if code == 200 else None

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def failover(args):
    times = []
    for run in range(args.runs):
        c = Cluster(args.kiln)
        try:
            leader = c.leader()
            survivors = [i for i in range(1, 4) if i != leader]
            for k in range(50):
                assert http("PUT", f"{c.base(survivors[0])}/Patient/w{k}", {"resourceType": "Patient", "id": f"w{k}"})[0] in (200, 201)
            killed = time.time()
            c.kill9(leader)
            k = 0
            while True:
                k += 1
                code, _ = http("PUT", f"{c.base(survivors[k % 2])}/Patient/f{k}", {"resourceType": "Patient", "id": f"f{k}"}, timeout=15)
                if code in (200, 201):
                    break
            t = time.time() - killed
            times.append(t)
            print(f"run {run + 1}: first acknowledged write {t * 1000:.0f} ms after kill -9 of leader {leader}", flush=True)
        finally:
            c.stop()
    print(f"failover median {statistics.median(times) * 1000:.0f} ms over {len(times)} runs "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")


def snapshot(args):
    c = Cluster(args.kiln, keep_entries=100)
    try:
        leader = c.leader()
        lagging = [i for i in range(1, 4) if i != leader][0]
        c.kill9(lagging)
        n, lock, next_i = args.resources, threading.Lock(), [0]

        def writer():
            while True:
                with lock:
                    i = next_i[0]
                    next_i[0] += 1
                if i >= n:
                    return
                body = {"resourceType": "Patient", "id": f"p{i}", "name": [{"family": f"Family{i}", "given": ["Snap"]}]}
                code, _ = http("PUT", f"{c.base(leader)}/Patient/p{i}", body)
                assert code in (200, 201), code

        t0 = time.time()
        ts = [threading.Thread(target=writer) for _ in range(16)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print(f"loaded {n} resources in {time.time() - t0:.1f} s with node {lagging} down", flush=True)
        ls = c.status(leader)
        print(f"leader log: first_index {ls['first_index']}, last_index {ls['last_index']}", flush=True)
        t0 = time.time()
        c.start(lagging)
        want = c.digest(leader)
        while True:
            s = c.status(lagging)
            if s and s["applied_index"] >= want["applied_index"]:
                break
            time.sleep(0.05)
        caught = time.time() - t0
        got = c.digest(lagging)
        assert got == want, (got, want)
        s = c.status(lagging)
        print(f"snapshot catch-up of {n} resources: {caught * 1000:.0f} ms from restart to applied index "
              f"{s['applied_index']} (node first_index {s['first_index']}: installed from a snapshot); digests equal")
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiln", default="target/release/kiln")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("failover")
    f.add_argument("--runs", type=int, default=5)
    s = sub.add_parser("snapshot")
    s.add_argument("--resources", type=int, default=20000)
    args = ap.parse_args()
    {"failover": failover, "snapshot": snapshot}[args.cmd](args)


if __name__ == "__main__":
    main()
