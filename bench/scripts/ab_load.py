"""Loads the side-by-side data set (bench/scripts/ab.sh): 2,000 Patients and 10,000 Observations
by POST in transaction bundles of 100, and writes a wrk script that reads them by id at random.
Usage: ab_load.py BASE_URL OUT.lua"""
import json
import sys
import urllib.request

base, out = sys.argv[1], sys.argv[2]
ids = []
for chunk in range(20):
    entries = []
    for p in range(chunk * 100, chunk * 100 + 100):
        full = f"urn:uuid:00000000-0000-0000-0000-{p:012}"
        entries.append({"fullUrl": full, "resource": {"resourceType": "Patient", "name": [{"family": f"F{p % 100}", "given": [f"G{p}"]}], "gender": "female", "birthDate": "1970-01-01"},
                        "request": {"method": "POST", "url": "Patient"}})
        for o in range(5):
            entries.append({"resource": {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                                         "subject": {"reference": full}, "valueQuantity": {"value": o * 7 + p % 50, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
                            "request": {"method": "POST", "url": "Observation"}})
    body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()
    req = urllib.request.Request(base + "/", data=body, headers={"Content-Type": "application/fhir+json"}, method="POST")
    with urllib.request.urlopen(req) as r:
        for e in json.load(r)["entry"]:
            ids.append(e["response"]["location"].split("/_history")[0])
with open(out, "w") as f:
    f.write("local ids = {" + ",".join(f'"/{i}"' for i in ids) + "}\n")
    f.write("math.randomseed(7)\nrequest = function() return wrk.format('GET', ids[math.random(#ids)]) end\n")
