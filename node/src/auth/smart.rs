//! SMART on FHIR scopes (App Launch v2 and v1): `patient/Observation.rs`, `user/*.cruds`,
//! `system/*.rs`, `patient/*.read`, `user/Patient.write`, `user/*.*`. A scope grants permission
//! letters (`c` create, `r` read, `u` update, `d` delete, `s` search) on one type or all; v1's
//! `read` is `rs`, `write` is `cud`, `*` is `cruds`. `user/` and `system/` scopes reach every
//! resource; `patient/` scopes reach the compartment of the token's patient. Scopes that are not
//! resource scopes (`openid`, `launch`, `offline_access`, …) grant nothing here, and so do v2
//! scopes narrowed by a query (`patient/Observation.rs?category=…`): this server does not
//! evaluate those, and grants less rather than more.

/// The scope's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Patient,
    User,
    System,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    level: Level,
    /// `None`: every type.
    rtype: Option<String>,
    perms: String,
}

/// The resource scopes of a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    scopes: Vec<Scope>,
}

/// What the scopes reach of a type for one permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    None,
    /// Only the patient's compartment.
    Patient,
    All,
}

fn parse_one(s: &str) -> Option<Scope> {
    let (level, rest) = s.split_once('/')?;
    let level = match level {
        "patient" => Level::Patient,
        "user" => Level::User,
        "system" => Level::System,
        _ => return None,
    };
    if rest.contains('?') {
        return None;
    }
    let (rtype, perms) = rest.rsplit_once('.')?;
    let rtype = match rtype {
        "*" => None,
        t if !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric()) => Some(t.to_string()),
        _ => return None,
    };
    let perms = match perms {
        "read" => "rs".to_string(),
        "write" => "cud".to_string(),
        "*" => "cruds".to_string(),
        p if !p.is_empty() && is_v2_perms(p) => p.to_string(),
        _ => return None,
    };
    Some(Scope { level, rtype, perms })
}

/// v2 permissions: letters of `cruds`, each at most once, in that order.
fn is_v2_perms(p: &str) -> bool {
    let mut last = None;
    for c in p.chars() {
        let Some(pos) = "cruds".find(c) else { return false };
        if last.is_some_and(|l| pos <= l) {
            return false;
        }
        last = Some(pos);
    }
    true
}

impl Scopes {
    /// Parses a space-separated scope string, keeping the resource scopes.
    pub fn parse(text: &str) -> Scopes {
        Scopes { scopes: text.split_whitespace().filter_map(parse_one).collect() }
    }

    /// The resource scopes of a token's scope list, or `None` when it names none (only OpenID
    /// scopes such as `openid profile`: SMART does not apply, as for a Cognito access token
    /// carrying groups). A `patient/`, `user/` or `system/` entry counts even if malformed or
    /// narrowed, so that such a token gets less, never more.
    pub fn from_claim(entries: &[String]) -> Option<Scopes> {
        let resource_like = |s: &str| ["patient/", "user/", "system/"].iter().any(|p| s.starts_with(p));
        entries.iter().any(|s| resource_like(s)).then(|| Scopes::parse(&entries.join(" ")))
    }

    /// What the scopes reach of `rtype` for permission `letter`.
    pub fn reach(&self, rtype: &str, letter: char) -> Reach {
        let mut best = Reach::None;
        for s in &self.scopes {
            if s.rtype.as_deref().is_some_and(|t| t != rtype) || !s.perms.contains(letter) {
                continue;
            }
            match s.level {
                Level::User | Level::System => return Reach::All,
                Level::Patient => best = Reach::Patient,
            }
        }
        best
    }

    /// Whether any scope is a `patient/` one (the token then needs a patient context).
    pub fn has_patient_scopes(&self) -> bool {
        self.scopes.iter().any(|s| s.level == Level::Patient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_scopes() {
        let s = Scopes::parse("openid fhirUser launch/patient patient/Observation.rs user/Patient.cu system/Encounter.read patient/*.write");
        assert_eq!(s.reach("Observation", 'r'), Reach::Patient);
        assert_eq!(s.reach("Observation", 's'), Reach::Patient);
        assert_eq!(s.reach("Observation", 'c'), Reach::Patient, "patient/*.write");
        assert_eq!(s.reach("Observation", 'd'), Reach::Patient);
        assert_eq!(s.reach("Patient", 'c'), Reach::All);
        assert_eq!(s.reach("Patient", 'r'), Reach::None);
        assert_eq!(s.reach("Encounter", 's'), Reach::All);
        assert_eq!(s.reach("Encounter", 'u'), Reach::Patient, "patient/*.write covers it");
        assert!(s.has_patient_scopes());
        assert_eq!(Scopes::parse("user/*.*").reach("Anything", 'd'), Reach::All);
        let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(Scopes::from_claim(&words("openid profile aws.cognito.signin.user.admin")), None, "no SMART scopes: groups alone decide");
        assert_eq!(Scopes::from_claim(&words("openid patient/Observation.rs?category=x")), Some(Scopes::default()), "a narrowed scope still counts (and grants nothing)");
    }

    #[test]
    fn malformed_and_narrowed_scopes_grant_nothing() {
        for bad in ["patient/Observation.rsc", "patient/Observation.rr", "user/Obs-x.rs", "doctor/*.rs", "patient/Observation.rs?category=laboratory", "patient/.rs", "user/*"] {
            assert_eq!(Scopes::parse(bad), Scopes::default(), "{bad}");
        }
    }
}
