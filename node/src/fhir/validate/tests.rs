//! Accept/reject behaviour of the compiled schemas, and the issues reported for invalid bodies.

use serde_json::json;

use super::*;

fn issues(v: &Validators, rtype: &str, body: &Value) -> Vec<Issue> {
    match v.validate(rtype, body) {
        Err(FhirError::Schema { issues, .. }) => issues,
        other => panic!("expected schema issues for {body}, got {other:?}"),
    }
}

#[test]
fn r4_accepts_valid_and_rejects_invalid_with_path() {
    let v = Validators::load(FhirVersion::R4);
    v.validate("Patient", &json!({"resourceType": "Patient", "name": [{"family": "Chalmers"}]})).unwrap();
    let err = v.validate("Patient", &json!({"resourceType": "Patient", "name": [{"family": 5}]})).unwrap_err();
    assert!(err.to_string().contains("/name/0/family"), "{err}");
    let found = issues(&v, "Patient", &json!({"resourceType": "Patient", "name": [{"family": 5}]}));
    assert_eq!(found[0].expression, "Patient.name[0].family");
    assert_eq!(found[0].diagnostics, "at /name/0/family: expected a string, found 5");
    let found = issues(&v, "Patient", &json!({"resourceType": "Patient", "colour": "blue"}));
    assert_eq!((found[0].expression.as_str(), found[0].diagnostics.as_str()), ("Patient.colour", "at /colour: unknown element 'colour'"));
    // A no-break space is valid in a FHIR string (schema-patch.json fixes the upstream pattern).
    v.validate("Patient", &json!({"resourceType": "Patient", "name": [{"text": "A\u{a0}B"}]})).unwrap();
    // Canonical elements have their `_x` twin (schema-patch.json).
    v.validate("StructureDefinition", &json!({"resourceType": "StructureDefinition", "url": "http://x", "name": "X",
        "status": "draft", "kind": "resource", "abstract": false, "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient", "_baseDefinition": {"extension": []}}))
        .unwrap();
    let err = v.validate("Patient", &json!({"resourceType": "Patient", "gender": "bogus"})).unwrap_err();
    assert!(err.to_string().contains("/gender") && err.to_string().contains("\"bogus\" is not one of"), "{err}");
    let found = issues(&v, "Patient", &json!({"resourceType": "Patient", "birthDate": "1970-13-01"}));
    assert!(found[0].diagnostics.contains("does not match the pattern"), "{found:?}");
}

#[test]
fn stu3_rejects_unknown_elements_and_unanchored_patterns() {
    let v = Validators::load(FhirVersion::Stu3);
    v.validate("Patient", &json!({"resourceType": "Patient", "birthDate": "1970-01-01", "name": [{"family": "X"}]})).unwrap();
    let err = v.validate("Patient", &json!({"resourceType": "Patient", "colour": "blue"})).unwrap_err();
    assert!(err.to_string().contains("unknown element 'colour'"), "{err}");
    let err = v.validate("Patient", &json!({"resourceType": "Patient", "contact": [{"nme": {"family": "X"}}]})).unwrap_err();
    assert!(err.to_string().contains("/contact/0/nme"), "{err}");
    let err = v.validate("Patient", &json!({"resourceType": "Patient", "birthDate": "x1970-01-01y"})).unwrap_err();
    assert!(err.to_string().contains("birthDate"), "{err}");
    let contained = json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "nmae": "x"}]});
    let found = issues(&v, "Patient", &contained);
    assert_eq!(found[0].expression, "Patient.contained[0].nmae");
    // Resource.id keeps its pattern under Element.id's plain string.
    assert!(v.validate("Patient", &json!({"resourceType": "Patient", "id": "a b"})).is_err());
}

#[test]
fn stu3_fixes_enum_on_arrays_and_simple_quantity_twins() {
    let v = Validators::load(FhirVersion::Stu3);
    let dosage = |dose: Value| json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"text": "x"}, "subject": {"reference": "Patient/1"},
        "dosageInstruction": [dose]});
    v.validate("MedicationRequest", &dosage(json!({"doseQuantity": {"value": 1}}))).unwrap();
    v.validate("MedicationRequest", &dosage(json!({"doseSimpleQuantity": {"value": 1}}))).unwrap();
    assert!(v.validate("MedicationRequest", &dosage(json!({"doseQuantity": {"value": "1"}}))).is_err());
    let sp = |comparator: Value| json!({"resourceType": "SearchParameter", "url": "http://x", "name": "x", "status": "draft",
        "description": "x", "code": "x", "base": ["Patient"], "type": "number", "comparator": comparator});
    v.validate("SearchParameter", &sp(json!(["eq", "gt"]))).unwrap();
    assert!(v.validate("SearchParameter", &sp(json!(["nope"]))).is_err());
}

#[test]
fn null_is_allowed_only_in_primitive_extension_arrays() {
    for version in [FhirVersion::R4, FhirVersion::Stu3] {
        let v = Validators::load(version);
        let ok = json!({"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [null, {"extension": [{"url": "http://x", "valueString": "y"}]}]}]});
        v.validate("Patient", &ok).unwrap_or_else(|e| panic!("{version}: {e}"));
        assert!(v.validate("Patient", &json!({"resourceType": "Patient", "name": [{"given": [null]}]})).is_err(), "{version}");
        assert!(v.validate("Patient", &json!({"resourceType": "Patient", "name": [null]})).is_err(), "{version}");
        assert!(v.validate("Patient", &json!({"resourceType": "Patient", "name": [{"_given": [5]}]})).is_err(), "{version}");
        // A slot for an object accepts objects only.
        assert!(v.validate("Patient", &json!({"resourceType": "Patient", "name": [5]})).is_err(), "{version}");
        assert!(v.validate("Patient", &json!({"resourceType": "Patient", "meta": "x"})).is_err(), "{version}");
    }
}

#[test]
fn nested_resources_are_checked_against_their_own_type() {
    for version in [FhirVersion::R4, FhirVersion::Stu3] {
        let v = Validators::load(version);
        let bundle = |resource: Value| json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": resource}]});
        v.validate("Bundle", &bundle(json!({"resourceType": "Patient", "active": true}))).unwrap();
        let found = issues(&v, "Bundle", &bundle(json!({"resourceType": "Patient", "active": "yes"})));
        assert_eq!(found.len(), 1, "{version}: only the Patient's own error: {found:?}");
        assert_eq!(found[0].expression, "Bundle.entry[0].resource.active");
        let found = issues(&v, "Bundle", &bundle(json!({"resourceType": "Nonsense"})));
        assert_eq!(found[0].expression, "Bundle.entry[0].resource.resourceType", "{version}");
        assert!(found[0].diagnostics.contains("\"Nonsense\" is not one of"), "{found:?}");
        let found = issues(&v, "Bundle", &bundle(json!({"active": true})));
        assert!(found[0].diagnostics.contains("the required element 'resourceType' is missing"), "{found:?}");
        // A resource whose definition differs from the URL's is refused by the root dispatch too.
        assert!(v.validate("Bundle", &json!({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {"resourceType": "Bundle", "type": "nope"}}]})).is_err());
    }
}

#[test]
fn at_most_eight_issues_and_hostile_bodies_stay_cheap() {
    let v = Validators::load(FhirVersion::R4);
    let names: Vec<Value> = (0..50).map(|_| json!({"family": 5})).collect();
    let found = issues(&v, "Patient", &json!({"resourceType": "Patient", "name": names}));
    assert_eq!(found.len(), MAX_REPORTED);
    assert_eq!(found[7].expression, "Patient.name[7].family");
    // A million wrong items: one issue, without holding a million errors.
    let many = json!({"resourceType": "Patient", "name": vec![json!(5); 1_000_000]});
    let started = Instant::now();
    let found = issues(&v, "Patient", &many);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].expression, "Patient.name[0]");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // Patterns are matched in linear time: a long near-miss of the code pattern.
    let code = format!("{}  x", "a ".repeat(200_000));
    let started = Instant::now();
    assert!(v.validate("Patient", &json!({"resourceType": "Patient", "language": code})).is_err());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[test]
fn unknown_type_and_both_versions_compile() {
    for version in [FhirVersion::R4, FhirVersion::Stu3] {
        let v = Validators::compile(version).unwrap();
        assert!(matches!(v.validate("Nope", &json!({"resourceType": "Nope"})), Err(FhirError::UnknownType(..))));
    }
    assert_eq!(Validators::load(FhirVersion::R4).resource_types().len(), 146);
    assert!(values_at_most(&json!([1, [2, 3]]), 5) && !values_at_most(&json!([1, [2, 3]]), 4));
}
