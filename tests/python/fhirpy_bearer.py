"""fhirpy (a FHIR client library apps use) against a Kiln node with [auth] mode = "jwt".

Usage: fhirpy_bearer.py BASE_URL TOKEN. Creates, reads and searches a Patient with the bearer
token, checks that a client without a token is refused, and prints "ok <id>".
"""
import sys

from fhirpy import SyncFHIRClient


def main() -> int:
    base, token = sys.argv[1], sys.argv[2]
    client = SyncFHIRClient(base, authorization=f"Bearer {token}")
    patient = client.resource("Patient", name=[{"family": "Fhirpy", "given": ["Ada"]}], active=True)
    patient.save()
    assert patient.id, "the server assigned an id"
    read = client.reference("Patient", patient.id).to_resource()
    assert read["name"][0]["family"] == "Fhirpy", read
    found = client.resources("Patient").search(family="Fhirpy").fetch()
    assert [r.id for r in found] == [patient.id], found
    anonymous = SyncFHIRClient(base)
    try:
        anonymous.resources("Patient").fetch()
    except Exception as e:  # fhirpy raises on the 401 OperationOutcome
        assert "login" in str(e) or "401" in str(e) or "authentication" in str(e), repr(e)
    else:
        print("a client without a token was served", file=sys.stderr)
        return 1
    print("ok", patient.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
