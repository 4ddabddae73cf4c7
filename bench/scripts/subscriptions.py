#!/usr/bin/env python3
"""Subscription measurements on real processes: a Kiln node with [subscriptions] enabled and a
rest-hook receiver (a Python HTTP server on 127.0.0.1 that answers 200 and timestamps arrivals).

  create   --runs R --seconds S   kiln-bench create (POST Observation, 16 clients) on a fresh node
                                  with 0 and then 100 active rest-hook Subscriptions on Observation
                                  (distinct codes, none matching the created Observations: the cost
                                  measured is judging every write against 100 criteria), alternated
  latency  --writes N             one active rest-hook Subscription (payload none) matching every
                                  Observation; N sequential POSTs, 50 ms apart; per write, the time
                                  from the 201 (the acknowledgement) to the notification's arrival
                                  at the receiver: p50 / p95 / max

Usage: bench/scripts/subscriptions.py --kiln target/release/kiln --bench target/release/kiln-bench create --runs 2
       bench/scripts/subscriptions.py --kiln target/release/kiln latency --writes 200
Only the Python standard library is used.
"""
import argparse, http.server, json, os, shutil, statistics, subprocess, sys, tempfile, threading, time
import urllib.request

from common import free_ports


def call(method, url, data=None, timeout=60, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


class Receiver:
    """Answers 200 to every request; records (path, arrival time)."""

    def __init__(self):
        self.hits = []
        hits = self.hits

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self):
                n = int(self.headers.get("content-length") or 0)
                if n:
                    self.rfile.read(n)
                hits.append((self.path, time.time()))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            do_POST = do_PUT = do_DELETE = handle_one

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        self.server.shutdown()


class Kiln:
    def __init__(self, binary, tmp):
        http_port, admin_port = free_ports(2)
        self.base = f"http://127.0.0.1:{http_port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        cfg = os.path.join(tmp, "kiln.toml")
        open(cfg, "w").write(f'''data_dir = "{os.path.join(tmp, "kiln-data")}"
listen = "127.0.0.1:{http_port}"
admin_listen = "127.0.0.1:{admin_port}"
[subscriptions]
enabled = true
allow_private_endpoints = true
''')
        self.proc = subprocess.Popen([binary, "serve", "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        self.proc.stdout.readline()
        start = time.time()
        while True:
            try:
                if call("GET", self.base + "/metadata", timeout=2)[0] == 200:
                    break
            except Exception:
                pass
            if time.time() - start > 60:
                sys.exit("kiln did not start")
            time.sleep(0.1)

    def post(self, rtype, body):
        st, out = call("POST", f"{self.base}/{rtype}", json.dumps(body).encode(), headers={"content-type": "application/fhir+json"})
        assert st == 201, out[:300]
        return json.loads(out)

    def subscribe(self, criteria, endpoint):
        sub = self.post("Subscription", {"resourceType": "Subscription", "status": "requested", "reason": "bench", "criteria": criteria,
                                         "channel": {"type": "rest-hook", "endpoint": endpoint}})
        return sub["id"]

    def wait_active(self, ids):
        start = time.time()
        for i in ids:
            while json.loads(call("GET", f"{self.base}/Subscription/{i}")[1])["status"] != "active":
                if time.time() - start > 120:
                    sys.exit(f"Subscription/{i} not active")
                time.sleep(0.05)

    def status(self):
        return json.loads(call("GET", self.admin + "/_cluster/status", timeout=10)[1])

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def create(a):
    rows = []
    for run in range(a.runs):
        for subs in (0, 100):
            tmp = tempfile.mkdtemp(prefix="kiln-subs-create-")
            rx = Receiver()
            kiln = Kiln(a.kiln, tmp)
            ids = [kiln.subscribe(f"Observation?code=http://loinc.org|bench-{i}", rx.url(f"/hook/{i}")) for i in range(subs)]
            kiln.wait_active(ids)
            out = os.path.join(tmp, "out")
            subprocess.run([a.bench, "run", "--base", kiln.base, "--patients", "10", "--scenarios", "create", "--clients", "16",
                            "--duration-secs", str(a.seconds), "--warmup-secs", "2", "--out", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            res = json.load(open(os.path.join(out, "results.json")))
            row = next(r for r in res["rows"] if r["scenario"] == "create")
            s = kiln.status()["subscriptions"]
            rows.append({"run": run, "active_subscriptions": subs, "create_req_per_s": round(row["rps"]), "p50_ms": row.get("p50_ms"),
                         "notifier_active_rest_hooks": s["active_rest_hooks"], "delivered": s["delivered"]})
            kiln.stop()
            rx.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(rows, indent=2))
    for subs in (0, 100):
        v = [r["create_req_per_s"] for r in rows if r["active_subscriptions"] == subs]
        print(f"{subs} active subscriptions: mean {statistics.mean(v):.0f} creates/s over {len(v)} runs")


def latency(a):
    tmp = tempfile.mkdtemp(prefix="kiln-subs-latency-")
    rx = Receiver()
    kiln = Kiln(a.kiln, tmp)
    kiln.wait_active([kiln.subscribe("Observation", rx.url("/hook"))])
    acks = []
    for i in range(a.writes):
        body = {"resourceType": "Observation", "status": "final", "code": {"text": f"latency {i}"}}
        kiln.post("Observation", body)
        acks.append(time.time())
        time.sleep(0.05)
    start = time.time()
    while len(rx.hits) < a.writes and time.time() - start < 60:
        time.sleep(0.05)
    if len(rx.hits) < a.writes:
        sys.exit(f"only {len(rx.hits)} of {a.writes} notifications arrived")
    arrivals = sorted(t for _, t in rx.hits)[: a.writes]
    lat = sorted((arr - ack) * 1000 for arr, ack in zip(arrivals, acks))
    q = statistics.quantiles(lat, n=100)
    if a.verbose:
        print([round((arr - ack) * 1000) for arr, ack in zip(arrivals, acks)])
    print(json.dumps({"writes": a.writes, "notifications": len(rx.hits), "p50_ms": round(statistics.median(lat), 1), "p95_ms": round(q[94], 1),
                      "max_ms": round(lat[-1], 1), "min_ms": round(lat[0], 1)}, indent=2))
    kiln.stop()
    rx.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", default="target/release/kiln")
    p.add_argument("--bench", default="target/release/kiln-bench")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("--runs", type=int, default=2)
    c.add_argument("--seconds", type=float, default=10)
    l = sub.add_parser("latency")
    l.add_argument("--writes", type=int, default=200)
    l.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    {"create": create, "latency": latency}[a.cmd](a)


if __name__ == "__main__":
    main()
