-- Creates for bench/scripts/ab.sh: POST /Patient with a small body.
wrk.method = "POST"
wrk.path = "/Patient"
wrk.headers["Content-Type"] = "application/fhir+json"
wrk.body = '{"resourceType":"Patient","name":[{"family":"Bench","given":["Ab"]}],"gender":"male","birthDate":"1980-02-03"}'
