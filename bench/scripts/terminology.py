#!/usr/bin/env python3
"""Cost of `:in` against the same OR list, on a real Kiln node (release build).

Stores a CodeSystem of 2 * --codes codes (urn:bench:codes|c0 …) and a ValueSet listing the first
--codes of them, loads --observations Observations (transaction bundles of 1,000 PUTs) whose code
is drawn uniformly from the whole system (so about half match), then alternates, --runs times each,
two POST /Observation/_search requests (form bodies, so the 1,000-value OR list is not limited by
the URL length) with _count=20 and the default total:

  in   code:in=urn:bench:vs
  or   code=urn:bench:codes|c0,urn:bench:codes|c1,…   (the value set's codes written out)

and prints the medians and p95 in ms, checking both find the same total. It also times the first
`:in` after start (which parses the shipped terminology if nothing did yet) and `$expand` of the
value set, and prints the node's log line for loading the shipped terminology (parse time, RSS growth).

Usage: bench/scripts/terminology.py --kiln target/release/kiln [--codes 1000] [--observations 20000] [--runs 200]
Only the Python standard library is used.
"""
import argparse, json, os, random, shutil, statistics, subprocess, tempfile, time
import urllib.parse

from common import free_ports, http, wait_http



def put(base, rtype, body):
    status, _ = http("PUT", f"{base}/{rtype}/{body['id']}", json.dumps(body).encode(), headers={"content-type": "application/fhir+json"})
    assert status in (200, 201), status


def search(base, form):
    data = urllib.parse.urlencode(form).encode()
    start = time.perf_counter()
    status, body = http("POST", f"{base}/Observation/_search", data, headers={"content-type": "application/x-www-form-urlencoded"})
    ms = (time.perf_counter() - start) * 1000
    assert status == 200, status
    return ms, json.loads(body)["total"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--codes", type=int, default=1000)
    ap.add_argument("--observations", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=200)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kiln-term-bench-")
    port, admin = free_ports(2)
    base = f"http://127.0.0.1:{port}"
    log = open(os.path.join(tmp, "kiln.log"), "w")
    proc = subprocess.Popen([a.kiln, "serve", "--data-dir", os.path.join(tmp, "data"), "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"],
                            stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "kiln::terminology=info,warn"})
    try:
        wait_http(base + "/metadata")
        time.sleep(1)
        with open(os.path.join(tmp, "kiln.log")) as f:
            print("".join(l for l in f if "shipped terminology loaded" in l).strip() or "no load line in the node's log")
        t = time.perf_counter()
        http("GET", f"{base}/Observation?status:in=http://hl7.org/fhir/ValueSet/observation-status&_count=1")
        print(f"first :in after start (shipped terminology parsed unless the start-up warm-up was done): {(time.perf_counter() - t) * 1000:.1f} ms")
        system = "urn:bench:codes"
        codes = [f"c{i}" for i in range(2 * a.codes)]
        put(base, "CodeSystem", {"resourceType": "CodeSystem", "id": "bench", "url": system, "status": "active", "content": "complete",
                                 "concept": [{"code": c, "display": f"Code {c}"} for c in codes]})
        put(base, "ValueSet", {"resourceType": "ValueSet", "id": "bench", "url": "urn:bench:vs", "status": "active",
                               "compose": {"include": [{"system": system, "concept": [{"code": c} for c in codes[:a.codes]]}]}})
        rng = random.Random(42)
        t = time.perf_counter()
        for start in range(0, a.observations, 1000):
            entries = [{"resource": {"resourceType": "Observation", "id": f"o{i}", "status": "final", "code": {"coding": [{"system": system, "code": rng.choice(codes)}]}},
                        "request": {"method": "PUT", "url": f"Observation/o{i}"}} for i in range(start, min(start + 1000, a.observations))]
            status, _ = http("POST", base, json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode(), headers={"content-type": "application/fhir+json"})
            assert status == 200, status
        print(f"loaded {a.observations} Observations in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        status, body = http("GET", f"{base}/ValueSet/$expand?url=urn:bench:vs&count=10")
        print(f"$expand of the {a.codes}-code value set: {(time.perf_counter() - t) * 1000:.1f} ms, total {json.loads(body)['expansion']['total']}")
        in_form = [("code:in", "urn:bench:vs"), ("_count", "20")]
        or_form = [("code", ",".join(f"{system}|{c}" for c in codes[:a.codes])), ("_count", "20")]
        times = {"in": [], "or": []}
        totals = set()
        for _ in range(5):
            search(base, in_form), search(base, or_form)
        for _ in range(a.runs):
            for name, form in (("in", in_form), ("or", or_form)):
                ms, total = search(base, form)
                times[name].append(ms)
                totals.add((name, total))
        assert len({t for _, t in totals}) == 1, totals
        print(f"matches: {totals.pop()[1]} of {a.observations}")
        for name, ts in times.items():
            ts.sort()
            print(f"{name:3} median {statistics.median(ts):.2f} ms  p95 {ts[int(len(ts) * 0.95) - 1]:.2f} ms  ({len(ts)} requests)")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


main()
