//! Server-owned metadata: stripping client-sent `meta.versionId` / `meta.lastUpdated`, stamping the
//! values the state machine decides, and the instant formats of FHIR and HTTP.

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Removes the elements the server owns from a client's body (an empty `meta` goes too).
pub fn strip_server_meta(body: &mut Value) {
    let Some(obj) = body.as_object_mut() else { return };
    let empty = match obj.get_mut("meta").and_then(Value::as_object_mut) {
        Some(meta) => {
            meta.shift_remove("versionId");
            meta.shift_remove("_versionId");
            meta.shift_remove("lastUpdated");
            meta.shift_remove("_lastUpdated");
            meta.is_empty()
        }
        None => false,
    };
    if empty {
        obj.shift_remove("meta");
    }
}

/// Sets `meta.versionId` and `meta.lastUpdated`; a new `meta` goes right after `id`.
pub fn stamp(body: &mut Value, version: u64, ts_micros: u64) {
    let Some(obj) = body.as_object_mut() else { return };
    if !obj.contains_key("meta") {
        let at = obj.keys().position(|k| k == "id").map(|i| i + 1).unwrap_or(obj.len().min(1));
        obj.shift_insert(at, "meta".into(), Value::Object(Map::new()));
    }
    if let Some(meta) = obj.get_mut("meta").and_then(Value::as_object_mut) {
        meta.shift_insert(0, "versionId".into(), Value::String(version.to_string()));
        meta.shift_insert(1, "lastUpdated".into(), Value::String(format_instant(ts_micros)));
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    d.as_micros() as u64
}

fn to_datetime(ts_micros: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ts_micros as i128 * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// FHIR `instant` with microseconds, UTC: `2026-11-27T02:16:10.123456Z`.
pub fn format_instant(ts_micros: u64) -> String {
    let t = to_datetime(ts_micros);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// HTTP-date (RFC 7231) for `Last-Modified`.
pub fn format_http_date(ts_micros: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_micros(ts_micros))
}

/// Parses an HTTP-date into microseconds (for `If-Modified-Since`).
pub fn parse_http_date(s: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_micros() as u64)
}

/// Parses a FHIR date / dateTime / instant of any precision into the half-open range
/// `[low, high)` of microseconds since 1970 it covers (negative before 1970). Without a time
/// zone, UTC is assumed. A range that ends past year 9999 is open: `high = i64::MAX`.
pub fn parse_fhir_range(s: &str) -> Option<(i64, i64)> {
    let to_micros = |t: OffsetDateTime| -> Option<i64> { i64::try_from(t.unix_timestamp_nanos() / 1000).ok() };
    if let Some(tpos) = s.find('T') {
        let (date, rest) = s.split_at(tpos + 1);
        let (clock, zone) = match rest.find(['Z', '+', '-']) {
            Some(i) => rest.split_at(i),
            None => (rest, "Z"),
        };
        let colons = clock.matches(':').count();
        let clock_full = if colons == 1 { format!("{clock}:00") } else { clock.to_string() };
        let t = OffsetDateTime::parse(&format!("{date}{clock_full}{zone}"), &Rfc3339).ok()?;
        let width = if colons == 1 {
            60_000_000
        } else if clock.contains('.') {
            1
        } else {
            1_000_000
        };
        let low = to_micros(t)?;
        return Some((low, low + width));
    }
    let parts: Vec<&str> = s.split('-').collect();
    let year: i32 = parts.first()?.parse().ok()?;
    if parts[0].len() != 4 {
        return None;
    }
    let month = match parts.get(1) {
        Some(m) => Month::try_from(m.parse::<u8>().ok()?).ok()?,
        None => Month::January,
    };
    let day: u8 = match parts.get(2) {
        Some(d) => d.parse().ok()?,
        None => 1,
    };
    if parts.len() > 3 {
        return None;
    }
    let start = PrimitiveDateTime::new(Date::from_calendar_date(year, month, day).ok()?, Time::MIDNIGHT)
        .assume_offset(UtcOffset::UTC);
    // The end of year 9999 is past what `time` represents: the range is then open-ended.
    let end = match parts.len() {
        1 => start.replace_year(year + 1).ok(),
        2 => {
            let (y, m) = if month == Month::December { (year + 1, Month::January) } else { (year, month.next()) };
            Date::from_calendar_date(y, m, 1).ok().map(|d| PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_offset(UtcOffset::UTC))
        }
        _ => start.checked_add(time::Duration::DAY),
    };
    let high = match end {
        Some(e) => to_micros(e)?,
        None => i64::MAX,
    };
    Some((to_micros(start)?, high))
}

/// [`parse_fhir_range`] for times after 1970 (earlier ones clamp to 0), open end = `u64::MAX`.
pub fn parse_fhir_datetime(s: &str) -> Option<(u64, u64)> {
    let (lo, hi) = parse_fhir_range(s)?;
    Some((lo.max(0) as u64, if hi == i64::MAX { u64::MAX } else { hi.max(0) as u64 }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strip_and_stamp() {
        let mut p = json!({"resourceType": "Patient", "id": "a", "meta": {"versionId": "9", "lastUpdated": "x"}, "active": true});
        strip_server_meta(&mut p);
        assert_eq!(p, json!({"resourceType": "Patient", "id": "a", "active": true}));
        stamp(&mut p, 3, 1_700_000_000_123_456);
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"resourceType":"Patient","id":"a","meta":{"versionId":"3","lastUpdated":"2023-11-14T22:13:20.123456Z"},"active":true}"#
        );
        let mut o = json!({"resourceType": "Patient", "id": "a", "meta": {"lastUpdated": "x"}, "b": 1, "c": 2});
        strip_server_meta(&mut o);
        assert_eq!(serde_json::to_string(&o).unwrap(), r#"{"resourceType":"Patient","id":"a","b":1,"c":2}"#, "element order kept");
        let mut q = json!({"resourceType": "Patient", "meta": {"profile": ["p"]}});
        stamp(&mut q, 1, 0);
        assert_eq!(q["meta"].as_object().unwrap().keys().collect::<Vec<_>>(), ["versionId", "lastUpdated", "profile"]);
    }

    #[test]
    fn fhir_datetime_ranges() {
        let y = parse_fhir_datetime("2020").unwrap();
        assert_eq!(format_instant(y.0), "2020-01-01T00:00:00.000000Z");
        assert_eq!(format_instant(y.1), "2021-01-01T00:00:00.000000Z");
        let m = parse_fhir_datetime("2020-12").unwrap();
        assert_eq!(format_instant(m.1), "2021-01-01T00:00:00.000000Z");
        let d = parse_fhir_datetime("2020-02-28").unwrap();
        assert_eq!(format_instant(d.1), "2020-02-29T00:00:00.000000Z");
        let s = parse_fhir_datetime("2020-02-28T10:00:00+02:00").unwrap();
        assert_eq!(format_instant(s.0), "2020-02-28T08:00:00.000000Z");
        assert_eq!(s.1 - s.0, 1_000_000);
        let f = parse_fhir_datetime("2020-02-28T10:00:00.5Z").unwrap();
        assert_eq!(f.1 - f.0, 1);
        assert!(parse_fhir_datetime("20-1").is_none());
        assert!(parse_fhir_datetime("2020-13").is_none());
        assert!(parse_fhir_datetime("yesterday").is_none());
        assert_eq!(parse_fhir_datetime("9999-12-31").unwrap().1, u64::MAX, "no overflow panic at the end of time");
        assert_eq!(parse_fhir_datetime("9999").unwrap().1, u64::MAX);
        assert_eq!(parse_fhir_datetime("9999-12").unwrap().1, u64::MAX);
    }

    #[test]
    fn http_dates_round_trip_to_the_second() {
        let ts = 1_700_000_000_999_999;
        let s = format_http_date(ts);
        assert_eq!(s, "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(parse_http_date(&s), Some(1_700_000_000_000_000));
    }
}
