#!/usr/bin/env python3
"""Writes the JSON seeds of the `bundle` corpus: transactions and batches in the shapes
`kiln::fuzzing::bundle` plans (a PATCH entry carries its JSON Patch as `resource.patch` and the
version it applies to as `patchTarget`). Run from node/fuzz: `python3 seedgen/bundle_seeds.py`. The committed corpus is
these seeds plus what fuzzing found, minimized (`-set_cover_merge=1`): a seed that adds no coverage
is not kept under its name."""
import json
import os
import shutil

U1 = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"
U2 = "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059"
div = lambda href: {"status": "generated", "div": f"<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"{href}\">x</a><img src='{href}'/></div>"}

bundles = {
    "tx-placeholders": {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": U1, "resource": {"resourceType": "Patient", "name": [{"family": "Doe"}], "identifier": [{"system": "urn:mrn", "value": "777"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|777"}},
        {"fullUrl": U2, "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": U1}, "text": div(U1)},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Encounter", "id": "e9", "status": "planned", "class": {"code": "AMB"}, "subject": {"reference": "Patient?identifier=urn:mrn|12345"}},
         "request": {"method": "PUT", "url": "Encounter/e9"}},
        {"request": {"method": "DELETE", "url": "Observation/ob3"}},
        {"request": {"method": "GET", "url": "Patient?name=chalmers&_count=1"}},
    ]},
    "batch-conditional": {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "active": False}, "request": {"method": "PUT", "url": "Patient?identifier=urn:mrn|12345"}},
        {"resource": {"resourceType": "Patient", "active": True}, "request": {"method": "PUT", "url": "Patient?name=nobody"}},
        {"request": {"method": "DELETE", "url": "Observation?status=final"}},
        {"request": {"method": "DELETE", "url": "Observation?code=http://loinc.org|"}},
        {"resource": {"resourceType": "Patient", "id": "p2", "gender": "other"}, "request": {"method": "PUT", "url": "Patient/p2", "ifMatch": "W/\"1\""}},
        {"resource": {"resourceType": "Patient", "id": "p3"}, "request": {"method": "PUT", "url": "Patient/p3", "ifNoneMatch": "*"}},
        {"request": {"method": "HEAD", "url": "Observation/ob1/_history/1", "ifModifiedSince": "Tue, 14 Nov 2023 22:13:20 GMT"}},
    ]},
    "tx-patch": {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "patch": [{"op": "replace", "path": "/active", "value": False}, {"op": "add", "path": "/name/-", "value": {"family": "X"}}]},
         "patchTarget": {"resourceType": "Patient", "id": "p1", "active": True, "name": [{"family": "Chalmers"}]},
         "request": {"method": "PATCH", "url": "Patient/p1", "ifMatch": "W/\"1\""}},
        {"resource": {"resourceType": "Binary", "patch": [{"op": "copy", "from": "/name", "path": "/contact"}]},
         "patchTarget": {"resourceType": "Patient", "id": "p2", "name": [{"family": "Smith"}]},
         "request": {"method": "PATCH", "url": "Patient/p2"}},
    ]},
    "tx-fullurl-refs": {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "http://example.org/fhir/Patient/a1", "resource": {"resourceType": "Patient", "id": "a1", "link": [{"other": {"reference": "Patient/a2"}, "type": "seealso"}]},
         "request": {"method": "PUT", "url": "Patient/a1"}},
        {"fullUrl": "http://example.org/fhir/Patient/a2", "resource": {"resourceType": "Patient", "id": "a2", "link": [{"other": {"reference": "http://example.org/fhir/Patient/a1/_history/3"}, "type": "refer"}]},
         "request": {"method": "PUT", "url": "http://example.org/fhir/Patient/a2"}},
        {"fullUrl": "urn:oid:1.2.3", "resource": {"resourceType": "Organization", "name": "o"}, "request": {"method": "POST", "url": "Organization"}},
        {"resource": {"resourceType": "Practitioner", "id": "d2", "extension": [{"url": "x", "valueReference": {"reference": "urn:oid:1.2.3"}}]}, "request": {"method": "PUT", "url": "Practitioner/d2"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "c"}, "subject": {"reference": "Patient?"}, "focus": [{"reference": "Patient?_id=p1,p2"}]},
         "request": {"method": "POST", "url": "Observation"}},
    ]},
    "tx-duplicates": {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": U1, "resource": {"resourceType": "Patient", "id": "z"}, "request": {"method": "PUT", "url": "Patient/z"}},
        {"fullUrl": U1, "resource": {"resourceType": "Patient", "id": "z"}, "request": {"method": "PUT", "url": "Patient/z"}},
        {"request": {"method": "DELETE", "url": "Patient/z"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient", "ifNoneExist": "Patient?identifier=urn:mrn|12345"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient", "ifNoneExist": "?identifier=urn:mrn|12345"}},
    ]},
    "bad-shapes": {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST"}}, {"request": {"url": "Patient"}}, {"resource": 5, "request": {"method": "PUT", "url": "Patient/a/b/c"}},
        {"resource": {"resourceType": "Observation"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "/Patient/p1/$everything"}}, {"request": {"method": "PUT", "url": "Patient/bad id"}},
    ]},
}
os.makedirs('corpus/bundle', exist_ok=True)
for name, b in bundles.items():
    with open(f'corpus/bundle/{name}.json', 'w') as f:
        json.dump(b, f)
examples = os.path.join(os.path.dirname(__file__), '../../../.cache/fhir-packages/r4-examples')
for name in ['Bundle-bundle-transaction.json', 'Bundle-bundle-request-simplesummary.json', 'Bundle-bundle-request-medsallergies.json', 'Bundle-xds.json']:
    src = os.path.join(examples, name)
    if os.path.exists(src):
        shutil.copy(src, f'corpus/bundle/{name}')
print(len(bundles), 'bundles')
