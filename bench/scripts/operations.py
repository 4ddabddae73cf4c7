#!/usr/bin/env python3
"""Operation latencies on a real node (release build): starts `kiln serve` on a fresh data dir,
loads one patient with --resources resources in its compartment (Observations, each referencing a
Practitioner and an Organization; transaction bundles of 500), then times --requests sequential
requests of each:

  everything   GET /Patient/P/$everything            (first page, default page size)
  everything-all  every page of /Patient/P/$everything?_count=100, following next links
  validate     POST /Observation/$validate           (a valid Observation)
  meta         GET /Patient/P/$meta

and prints p50 / p95 / p99 in ms.

Usage: bench/scripts/operations.py --kiln target/release/kiln --resources 1000 --requests 200
Only the Python standard library is used.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
import urllib.request

from common import free_ports


def http(method, url, body=None, ctype="application/fhir+json"):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": ctype} if data else {})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, json.loads(r.read() or b"null")


def percentiles(samples):
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]
    return f"p50 {statistics.median(s):.2f} ms, p95 {pick(0.95):.2f} ms, p99 {pick(0.99):.2f} ms (n={len(s)})"


def timed(n, fn):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--resources", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=200)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kiln-ops-bench-")
    port = free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    node = subprocess.Popen([a.kiln, "serve", "--data-dir", os.path.join(tmp, "node"), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        node.stdout.readline()
        http("PUT", f"{base}/Organization/org", {"resourceType": "Organization", "id": "org", "name": "Clinic"})
        http("PUT", f"{base}/Practitioner/dr", {"resourceType": "Practitioner", "id": "dr"})
        http("PUT", f"{base}/Patient/p", {"resourceType": "Patient", "id": "p", "managingOrganization": {"reference": "Organization/org"}})
        left, i = a.resources - 1, 0
        while left > 0:
            n = min(500, left)
            entries = [{"resource": {"resourceType": "Observation", "id": f"o{i + k}", "status": "final", "code": {"text": "bench"},
                                     "subject": {"reference": "Patient/p"}, "performer": [{"reference": "Practitioner/dr"}, {"reference": "Organization/org"}],
                                     "valueQuantity": {"value": k}},
                        "request": {"method": "PUT", "url": f"Observation/o{i + k}"}} for k in range(n)]
            http("POST", base + "/", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
            left -= n
            i += n
        _, first = http("GET", f"{base}/Patient/p/$everything")
        print(f"{a.resources} resources in Patient/p's compartment; first page {len(first.get('entry', []))} entries, total {first.get('total')}")
        for _ in range(20):
            http("GET", f"{base}/Patient/p/$everything")
        print("everything first page:", percentiles(timed(a.requests, lambda: http("GET", f"{base}/Patient/p/$everything"))))

        def all_pages():
            url = f"{base}/Patient/p/$everything?_count=100"
            while url:
                _, b = http("GET", url)
                url = next((l["url"] for l in b.get("link", []) if l["relation"] == "next"), None)
        print("everything all pages (_count=100):", percentiles(timed(max(5, a.requests // 20), all_pages)))
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1}}
        print("validate:", percentiles(timed(a.requests, lambda: http("POST", f"{base}/Observation/$validate", obs))))
        print("meta:", percentiles(timed(a.requests, lambda: http("GET", f"{base}/Patient/p/$meta"))))
    finally:
        node.kill()
        node.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
