//! The synthetic data generator. Deterministic: the same seed and patient count give the same
//! resources, byte for byte. Ids are stable (`pat-17`, `obs-17-3`, …), so scenarios can address
//! resources without reading them back. About 50 resources per patient by default:
//! 1 Patient, 5 Encounters, 35 Observations, 4 Conditions, 5 MedicationRequests.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

const GIVEN: [&str; 16] = [
    "Ana", "José", "Zoë", "Émile", "Jürgen", "Søren", "Chloé", "Ngọc", "Siobhán", "Mateo", "Aisha", "Liam", "Noé", "Åsa", "Björn", "Yuki",
];
const FAMILY: [&str; 16] = [
    "García", "Müller", "Nguyễn", "O'Brien", "Smith", "Øster", "Dubois", "Kowalski", "Rossi", "Johansson", "Tanaka", "Novák", "Fernández",
    "Schmidt", "Çelik", "Brown",
];
const CITIES: [(&str, &str, &str); 6] = [
    ("Boston", "MA", "02118"),
    ("Springfield", "IL", "62701"),
    ("Austin", "TX", "73301"),
    ("Portland", "OR", "97201"),
    ("Denver", "CO", "80202"),
    ("Madison", "WI", "53703"),
];
/// LOINC codes with weights: a few codes are very common (vital signs), most are rare.
const LOINC: [(&str, &str, &str, f64, f64, u32); 12] = [
    ("8867-4", "Heart rate", "/min", 50.0, 110.0, 300),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 95.0, 170.0, 250),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 55.0, 105.0, 250),
    ("29463-7", "Body weight", "kg", 3.0, 140.0, 120),
    ("8302-2", "Body height", "cm", 50.0, 200.0, 60),
    ("8310-5", "Body temperature", "Cel", 35.5, 40.5, 60),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 60.0, 250.0, 30),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 120.0, 300.0, 15),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 12.0, 10),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 8.0, 18.0, 8),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.4, 3.0, 5),
    ("6690-2", "Leukocytes [#/volume] in Blood", "10*3/uL", 3.0, 15.0, 2),
];
const SNOMED: [(&str, &str); 8] = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
    ("55822004", "Hyperlipidemia"),
    ("40055000", "Chronic sinusitis"),
    ("10509002", "Acute bronchitis"),
    ("444814009", "Viral sinusitis"),
    ("162864005", "Body mass index 30+ - obesity"),
];
const RXNORM: [(&str, &str); 6] = [
    ("860975", "metformin 500 MG Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("617312", "atorvastatin 10 MG Oral Tablet"),
    ("745679", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    ("308136", "amlodipine 5 MG Oral Tablet"),
    ("197361", "amlodipine 2.5 MG Oral Tablet"),
];

/// Shape of the generated data.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub encounters: usize,
    pub observations: usize,
    pub conditions: usize,
    pub medication_requests: usize,
}

impl Default for Profile {
    fn default() -> Self {
        Profile { encounters: 5, observations: 35, conditions: 4, medication_requests: 5 }
    }
}

/// Practitioners and Organizations shared by `patients` patients.
pub fn shared_counts(patients: usize) -> (usize, usize) {
    (patients / 20 + 1, patients / 100 + 1)
}

fn weighted<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T], weight: impl Fn(&T) -> u32) -> &'a T {
    let total: u32 = items.iter().map(&weight).sum();
    let mut pick = rng.gen_range(0..total);
    for item in items {
        let w = weight(item);
        if pick < w {
            return item;
        }
        pick -= w;
    }
    &items[0]
}

fn date(rng: &mut ChaCha8Rng, from_year: i32, to_year: i32) -> (i32, u32, u32) {
    (rng.gen_range(from_year..=to_year), rng.gen_range(1..=12), rng.gen_range(1..=28))
}

/// The Practitioners and Organizations (generate these first: patients reference them).
pub fn shared(seed: u64, patients: usize) -> Vec<Value> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let (pracs, orgs) = shared_counts(patients);
    let mut out = Vec::with_capacity(pracs + orgs);
    for o in 0..orgs {
        let (city, state, zip) = CITIES[o % CITIES.len()];
        out.push(json!({
            "resourceType": "Organization", "id": format!("org-{o}"), "active": true,
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": format!("{:010}", 1_000_000 + o)}],
            "name": format!("{city} General Hospital {o}"),
            "address": [{"city": city, "state": state, "postalCode": zip}]
        }));
    }
    for p in 0..pracs {
        let given = GIVEN[rng.gen_range(0..GIVEN.len())];
        let family = FAMILY[rng.gen_range(0..FAMILY.len())];
        out.push(json!({
            "resourceType": "Practitioner", "id": format!("prac-{p}"), "active": true,
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": format!("{:010}", 2_000_000 + p)}],
            "name": [{"family": family, "given": [given], "prefix": ["Dr."]}]
        }));
    }
    out
}

/// Every resource of patient `i`, Patient first.
pub fn patient(seed: u64, patients: usize, i: usize, profile: Profile) -> Vec<Value> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64);
    let (pracs, orgs) = shared_counts(patients);
    let pid = format!("pat-{i}");
    let subject = json!({"reference": format!("Patient/{pid}")});
    let (by, bm, bd) = date(&mut rng, 1930, 2020);
    let (city, state, zip) = CITIES[rng.gen_range(0..CITIES.len())];
    let gender = if rng.gen_bool(0.5) { "female" } else { "male" };
    let mut out = Vec::with_capacity(1 + profile.encounters + profile.observations + profile.conditions + profile.medication_requests);
    out.push(json!({
        "resourceType": "Patient", "id": pid, "active": true,
        "identifier": [{"system": "http://hospital.example.org/mrn", "value": format!("MRN{:08}", i)}],
        "name": [{"use": "official", "family": FAMILY[rng.gen_range(0..FAMILY.len())], "given": [GIVEN[rng.gen_range(0..GIVEN.len())]]}],
        "gender": gender,
        "birthDate": format!("{by:04}-{bm:02}-{bd:02}"),
        "address": [{"line": [format!("{} Main St", rng.gen_range(1..999))], "city": city, "state": state, "postalCode": zip}],
        "telecom": [{"system": "phone", "value": format!("555-{:04}", rng.gen_range(0..10000))}],
        "managingOrganization": {"reference": format!("Organization/org-{}", i % orgs)}
    }));
    let mut encounter_dates = Vec::new();
    for e in 0..profile.encounters {
        let (y, m, d) = date(&mut rng, 2010, 2025);
        let hour = rng.gen_range(7..18);
        encounter_dates.push((y, m, d));
        out.push(json!({
            "resourceType": "Encounter", "id": format!("enc-{i}-{e}"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
            "subject": subject,
            "participant": [{"individual": {"reference": format!("Practitioner/prac-{}", rng.gen_range(0..pracs))}}],
            "period": {"start": format!("{y:04}-{m:02}-{d:02}T{hour:02}:00:00Z"), "end": format!("{y:04}-{m:02}-{d:02}T{:02}:30:00Z", hour)},
            "serviceProvider": {"reference": format!("Organization/org-{}", i % orgs)}
        }));
    }
    for o in 0..profile.observations {
        let (code, display, unit, lo, hi, _) = *weighted(&mut rng, &LOINC, |l| l.5);
        let value = (rng.gen_range(lo..hi) * 10.0).round() / 10.0;
        let e = if profile.encounters > 0 { rng.gen_range(0..profile.encounters) } else { 0 };
        let (y, m, d) = encounter_dates.get(e).copied().unwrap_or((2020, 1, 1));
        let mut obs = json!({
            "resourceType": "Observation", "id": format!("obs-{i}-{o}"), "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
            "subject": subject,
            "effectiveDateTime": format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:00Z", rng.gen_range(7..18), rng.gen_range(0..60)),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
        });
        if profile.encounters > 0 {
            obs["encounter"] = json!({"reference": format!("Encounter/enc-{i}-{e}")});
        }
        out.push(obs);
    }
    for c in 0..profile.conditions {
        let (code, display) = SNOMED[rng.gen_range(0..SNOMED.len())];
        let (y, m, d) = date(&mut rng, 2000, 2025);
        out.push(json!({
            "resourceType": "Condition", "id": format!("cond-{i}-{c}"),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}], "text": display},
            "subject": subject,
            "onsetDateTime": format!("{y:04}-{m:02}-{d:02}")
        }));
    }
    for r in 0..profile.medication_requests {
        let (code, display) = RXNORM[rng.gen_range(0..RXNORM.len())];
        let (y, m, d) = date(&mut rng, 2010, 2025);
        out.push(json!({
            "resourceType": "MedicationRequest", "id": format!("medrx-{i}-{r}"), "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code, "display": display}]},
            "subject": subject,
            "authoredOn": format!("{y:04}-{m:02}-{d:02}"),
            "requester": {"reference": format!("Practitioner/prac-{}", rng.gen_range(0..pracs))}
        }));
    }
    out
}

/// Writes the data set as NDJSON, one file per resource type, without holding it in memory.
pub fn write_ndjson(dir: &std::path::Path, seed: u64, patients: usize, profile: Profile) -> Result<usize, crate::BenchError> {
    use std::collections::HashMap;
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut files: HashMap<String, std::io::BufWriter<std::fs::File>> = HashMap::new();
    let mut count = 0;
    let write = |r: &Value, files: &mut HashMap<String, std::io::BufWriter<std::fs::File>>| -> Result<(), crate::BenchError> {
        let t = r["resourceType"].as_str().unwrap_or("Unknown").to_string();
        if !files.contains_key(&t) {
            let f = std::fs::File::create(dir.join(format!("{t}.ndjson")))?;
            files.insert(t.clone(), std::io::BufWriter::new(f));
        }
        let f = files.get_mut(&t).expect("inserted above");
        serde_json::to_writer(&mut *f, r)?;
        f.write_all(b"\n")?;
        Ok(())
    };
    for r in shared(seed, patients) {
        write(&r, &mut files)?;
        count += 1;
    }
    for i in 0..patients {
        for r in patient(seed, patients, i, profile) {
            write(&r, &mut files)?;
            count += 1;
        }
    }
    for f in files.values_mut() {
        f.flush()?;
    }
    Ok(count)
}

/// Writes the data set as transaction Bundles of at most `size` entries (PUT at the stable ids),
/// `bundle-00000.json`, `bundle-00001.json`, …; returns the number of resources written.
pub fn write_bundles(dir: &std::path::Path, seed: u64, patients: usize, profile: Profile, size: usize) -> Result<usize, crate::BenchError> {
    std::fs::create_dir_all(dir)?;
    let resources = shared(seed, patients).into_iter().chain((0..patients).flat_map(move |i| patient(seed, patients, i, profile)));
    let (mut entries, mut files, mut count) = (Vec::with_capacity(size), 0usize, 0usize);
    let flush = |entries: &mut Vec<Value>, files: &mut usize| -> Result<(), crate::BenchError> {
        if entries.is_empty() {
            return Ok(());
        }
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": std::mem::take(entries)});
        std::fs::write(dir.join(format!("bundle-{:05}.json", *files)), serde_json::to_vec(&bundle)?)?;
        *files += 1;
        Ok(())
    };
    for r in resources {
        let (t, id) = (r["resourceType"].as_str().unwrap_or_default().to_string(), r["id"].as_str().unwrap_or_default().to_string());
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{:08x}-0000-4000-8000-{:012x}", count as u32, count),
            "resource": r,
            "request": {"method": "PUT", "url": format!("{t}/{id}")}
        }));
        count += 1;
        if entries.len() == size.max(1) {
            flush(&mut entries, &mut files)?;
        }
    }
    flush(&mut entries, &mut files)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_linked() {
        let a = patient(7, 100, 3, Profile::default());
        let b = patient(7, 100, 3, Profile::default());
        assert_eq!(a, b);
        assert_ne!(a, patient(8, 100, 3, Profile::default()));
        assert_eq!(a.len(), 50);
        assert_eq!(a[0]["id"], "pat-3");
        assert!(a.iter().skip(1).all(|r| r["subject"]["reference"] == "Patient/pat-3"));
    }

    #[test]
    fn loinc_codes_are_skewed() {
        let mut counts = std::collections::HashMap::new();
        for i in 0..200 {
            for r in patient(1, 200, i, Profile::default()) {
                if r["resourceType"] == "Observation" {
                    *counts.entry(r["code"]["coding"][0]["code"].as_str().unwrap().to_string()).or_insert(0) += 1;
                }
            }
        }
        assert!(counts["8867-4"] > 20 * counts.get("6690-2").copied().unwrap_or(1));
    }

    #[test]
    fn ndjson_streams_every_resource() {
        let dir = tempfile::tempdir().unwrap();
        let n = write_ndjson(dir.path(), 1, 10, Profile::default()).unwrap();
        assert_eq!(n, 10 * 50 + 1 + 1);
        let obs = std::fs::read_to_string(dir.path().join("Observation.ndjson")).unwrap();
        assert_eq!(obs.lines().count(), 350);
    }

    #[test]
    fn bundles_hold_every_resource_as_put() {
        let dir = tempfile::tempdir().unwrap();
        let n = write_bundles(dir.path(), 1, 10, Profile::default(), 100).unwrap();
        assert_eq!(n, 502);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 6);
        let b: Value = serde_json::from_slice(&std::fs::read(dir.path().join("bundle-00000.json")).unwrap()).unwrap();
        assert_eq!(b["type"], "transaction");
        assert_eq!(b["entry"].as_array().unwrap().len(), 100);
        assert_eq!(b["entry"][0]["request"]["method"], "PUT");
    }
}
