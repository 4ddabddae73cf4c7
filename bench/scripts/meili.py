#!/usr/bin/env python3
"""Meilisearch measurements on real processes (release build): a Kiln node with [meilisearch]
pointing at a real Meilisearch (shared/tools/meilisearch or --meilisearch).

  ingest  --patients N   bulk load (transaction bundles of 1000 PUTs from `kiln-bench generate`,
                         2 posting at once) while sampling /_cluster/status every 0.2 s: load
                         rate, indexing rate (documents confirmed by Meilisearch per second while
                         the backlog was non-empty), time from the load's end to lag 0; then
                         `_content` first-page latency (p50/p95 of --queries sequential requests)
  drain   --patients N   the same load with Meilisearch down (the indexer retries), then Meilisearch
                         started: backlog drain time and documents per second
  create  --seconds S    kiln-bench create (POST Observation, 16 clients) on a fresh node without
                         and with Meilisearch, alternated --runs times

Usage: bench/scripts/meili.py --kiln target/release/kiln --bench target/release/kiln-bench ingest --patients 2000
       bench/scripts/meili.py --kiln target/release/kiln --bench target/release/kiln-bench create --runs 2
Only the Python standard library is used.
"""
import argparse, glob, json, os, shutil, socket, statistics, subprocess, sys, tempfile, threading, time
import urllib.request, urllib.error

from common import free_ports, http, wait_http

HERE = os.path.dirname(os.path.abspath(__file__))
MEILI = os.path.normpath(os.path.join(HERE, "../../../shared/tools/meilisearch/meilisearch"))



class Meili:
    def __init__(self, binary, tmp):
        self.port = free_ports(1)[0]
        self.key = "bench-master-key-0123456789"
        self.key_file = os.path.join(tmp, "meili.key")
        open(self.key_file, "w").write(self.key)
        self.cwd = os.path.join(tmp, "meili-cwd")
        os.makedirs(self.cwd, exist_ok=True)
        self.args = [binary, "--db-path", os.path.join(tmp, "meili-db"), "--http-addr", f"127.0.0.1:{self.port}", "--master-key", self.key, "--no-analytics"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.args, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.url + "/health")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Kiln:
    def __init__(self, binary, tmp, meili=None):
        http_port, admin_port = free_ports(2)
        self.base = f"http://127.0.0.1:{http_port}"
        self.admin = f"http://127.0.0.1:{admin_port}"
        args = [binary, "serve", "--data-dir", os.path.join(tmp, "kiln-data"), "--listen", f"127.0.0.1:{http_port}",
                "--admin-listen", f"127.0.0.1:{admin_port}"]
        if meili:
            args += ["--meilisearch-url", meili.url, "--meilisearch-key-file", meili.key_file]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        self.proc.stdout.readline()
        wait_http(self.base + "/metadata")

    def status(self):
        return json.loads(http("GET", self.admin + "/_cluster/status", timeout=10)[1])

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def drain(a):
    """Meilisearch down during a bulk load, then started: how fast the indexer drains the backlog."""
    tmp = tempfile.mkdtemp(prefix="kiln-meili-drain-")
    bundles = os.path.join(tmp, "bundles")
    subprocess.run([a.bench, "generate", "--patients", str(a.patients), "--out", bundles, "--format", "bundles", "--bundle-size", "1000"], check=True,
                   stdout=subprocess.DEVNULL)
    meili = Meili(a.meilisearch, tmp)
    kiln = Kiln(a.kiln, tmp, meili)
    meili.stop()
    start = time.time()
    n = 0
    for f in sorted(glob.glob(os.path.join(bundles, "*.json"))):
        body = open(f, "rb").read()
        st, out = http("POST", kiln.base + "/", body, headers={"content-type": "application/fhir+json", "prefer": "return=minimal"})
        assert st == 200, out[:300]
        n += len(json.loads(body)["entry"])
    load_s = time.time() - start
    backlog = kiln.status()["meilisearch"]["lag_rows"]
    meili.start()
    t0 = time.time()
    while kiln.status()["meilisearch"]["lag_rows"] != 0:
        if time.time() - t0 > 900:
            sys.exit("backlog not drained in 900 s")
        time.sleep(0.1)
    secs = time.time() - t0
    docs = kiln.status()["meilisearch"]["docs_sent"]
    print(json.dumps({"resources": n, "load_s_meili_down": round(load_s, 2), "load_per_s_meili_down": round(n / load_s), "backlog_rows": backlog,
                      "drain_s": round(secs, 2), "docs_sent": docs, "drain_docs_per_s": round(docs / secs)}, indent=2))
    kiln.stop()
    meili.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def ingest(a):
    tmp = tempfile.mkdtemp(prefix="kiln-meili-bench-")
    bundles = os.path.join(tmp, "bundles")
    subprocess.run([a.bench, "generate", "--patients", str(a.patients), "--out", bundles, "--format", "bundles", "--bundle-size", "1000"], check=True,
                   stdout=subprocess.DEVNULL)
    files = sorted(glob.glob(os.path.join(bundles, "*.json")))
    meili = Meili(a.meilisearch, tmp)
    kiln = Kiln(a.kiln, tmp, meili)
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            try:
                m = kiln.status()["meilisearch"]
                samples.append((time.time(), m["docs_sent"], m["lag_rows"]))
            except Exception:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    queue = list(files)
    lock = threading.Lock()
    count = [0]

    def poster():
        while True:
            with lock:
                if not queue:
                    return
                f = queue.pop(0)
            body = open(f, "rb").read()
            st, out = http("POST", kiln.base + "/", body, headers={"content-type": "application/fhir+json", "prefer": "return=minimal"})
            assert st == 200, out[:300]
            with lock:
                count[0] += len(json.loads(body)["entry"])

    start = time.time()
    threads = [threading.Thread(target=poster) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    load_end = time.time()
    while True:
        m = kiln.status()["meilisearch"]
        if m["lag_rows"] == 0:
            break
        if time.time() - load_end > 600:
            sys.exit(f"lag did not reach 0 in 600 s: {m}")
        time.sleep(0.05)
    drained = time.time()
    stop.set()
    t.join()
    # Indexing rate: documents confirmed per second from the first to the last confirmation.
    moving = [s for s in samples if s[1] > 0]
    first = moving[0]
    last = (drained, kiln.status()["meilisearch"]["docs_sent"], 0)
    rate = (last[1] - first[1]) / max(last[0] - first[0], 1e-9)
    def timed(url):
        st, body = http("GET", url)
        total = json.loads(body).get("total")
        lat = []
        for _ in range(a.queries):
            t0 = time.perf_counter()
            http("GET", url)
            lat.append((time.perf_counter() - t0) * 1000)
        lat.sort()
        return total, lat

    url = kiln.base + "/Observation?_content=glucose&_count=20"
    total, lat = timed(url)
    # With another criterion: every text match is taken and intersected with the embedded result.
    url2 = kiln.base + "/Observation?_content=glucose&status=final&_count=20"
    total2, lat2 = timed(url2)
    result = {
        "resources": count[0],
        "load_s": round(load_end - start, 2),
        "load_per_s": round(count[0] / (load_end - start)),
        "docs_sent": last[1],
        "index_docs_per_s": round(rate),
        "lag0_after_load_end_s": round(drained - load_end, 2),
        "max_lag_rows": max(s[2] for s in samples) if samples else None,
        "content_query": url.replace(kiln.base, ""),
        "content_total": total,
        "content_p50_ms": round(lat[len(lat) // 2], 2),
        "content_p95_ms": round(lat[int(len(lat) * 0.95)], 2),
        "content_criteria_query": url2.replace(kiln.base, ""),
        "content_criteria_total": total2,
        "content_criteria_p50_ms": round(lat2[len(lat2) // 2], 2),
        "content_criteria_p95_ms": round(lat2[int(len(lat2) * 0.95)], 2),
    }
    print(json.dumps(result, indent=2))
    kiln.stop()
    meili.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def create(a):
    rows = []
    for run in range(a.runs):
        for with_meili in (False, True):
            tmp = tempfile.mkdtemp(prefix="kiln-meili-create-")
            meili = Meili(a.meilisearch, tmp) if with_meili else None
            kiln = Kiln(a.kiln, tmp, meili)
            out = os.path.join(tmp, "out")
            subprocess.run([a.bench, "run", "--base", kiln.base, "--patients", "10", "--scenarios", "create", "--clients", "16",
                            "--duration-secs", str(a.seconds), "--warmup-secs", "2", "--out", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            res = json.load(open(os.path.join(out, "results.json")))
            rps = next((r["rps"] for r in res["rows"] if r["scenario"] == "create"), None)
            m = kiln.status()["meilisearch"]
            rows.append({"run": run, "meilisearch": with_meili, "create_req_per_s": round(rps) if rps else None, "docs_sent": m.get("docs_sent")})
            kiln.stop()
            if meili:
                meili.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(rows, indent=2))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", default="target/release/kiln")
    p.add_argument("--bench", default="target/release/kiln-bench")
    p.add_argument("--meilisearch", default=os.environ.get("KILN_MEILISEARCH", MEILI))
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("ingest")
    i.add_argument("--patients", type=int, default=2000)
    i.add_argument("--queries", type=int, default=200)
    d = sub.add_parser("drain")
    d.add_argument("--patients", type=int, default=2000)
    c = sub.add_parser("create")
    c.add_argument("--runs", type=int, default=2)
    c.add_argument("--seconds", type=float, default=10)
    a = p.parse_args()
    {"ingest": ingest, "drain": drain, "create": create}[a.cmd](a)


if __name__ == "__main__":
    main()
