//! Exact decimals for number and quantity search: the digits of the JSON text, never a float
//! (6.3 stays 6.3). Values are kept as a mantissa and a count of fraction digits, compared
//! exactly, and encoded into index keys as order-preserving fixed-point numbers with 18
//! fraction digits (values needing more are rounded toward negative infinity in the key only).

use std::cmp::Ordering;

/// `mantissa × 10^-scale`. Equality is numeric: 6.3 == 6.30.
#[derive(Debug, Clone, Copy)]
pub struct Decimal {
    pub mantissa: i128,
    pub scale: u32,
}

/// Fraction digits of the key encoding.
pub const KEY_SCALE: u32 = 18;

/// Most significant digits, and most fraction digits, of a decimal Kiln stores exactly.
pub const MAX_DIGITS: usize = 36;

/// Largest exponent magnitude accepted in `1e…` notation.
const MAX_EXPONENT: u64 = 76;

impl Decimal {
    /// Parses `-12.340`, `1e3`, `6.3E-2`. `None` for anything else or out of range: more than
    /// [`MAX_DIGITS`] digits, a magnitude of 10^38 or more, or more than [`MAX_DIGITS`] fraction
    /// digits. The work is bounded by the length of `s` whatever its exponent (`0e2147483647` is
    /// refused at once, not computed).
    pub fn parse(s: &str) -> Option<Decimal> {
        let s = s.trim();
        let (num, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
            None => (s, 0),
        };
        let (neg, digits) = match num.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, num.strip_prefix('+').unwrap_or(num)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty() || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) || int.len() + frac.len() > MAX_DIGITS {
            return None;
        }
        // No decimal that can be stored needs an exponent this large, whatever its digits.
        if exp.unsigned_abs() > MAX_EXPONENT {
            return None;
        }
        let mut mantissa: i128 = format!("{int}{frac}").parse().ok()?;
        let mut scale = frac.len() as i64 - exp;
        if scale < 0 {
            // At most MAX_EXPONENT + MAX_DIGITS steps; overflow means the value is out of range.
            mantissa = mantissa.checked_mul(10i128.checked_pow(u32::try_from(-scale).ok()?)?)?;
            scale = 0;
        }
        if scale > MAX_DIGITS as i64 {
            return None;
        }
        Some(Decimal { mantissa: if neg { -mantissa } else { mantissa }, scale: scale as u32 })
    }

    /// A stored value as the index keeps it: [`Self::parse`] when exact, else the nearest value
    /// it can hold, rounded toward negative infinity: beyond ±10^38 saturates, digits past 36
    /// fraction digits (or past 38 significant ones) are dropped (`1e-245` → 0, `-1e-245` →
    /// -10^-36). FHIR decimals have no range limit (the spec's own examples hold 1e245), so a
    /// resource keeps its value as sent and only its index row is approximate. `None` when `s` is
    /// not a JSON number. Work is linear in `s.len()`, whatever the exponent.
    pub fn parse_saturating(s: &str) -> Option<Decimal> {
        if let Some(d) = Decimal::parse(s) {
            return Some(d);
        }
        let s = s.trim();
        let (num, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => (s, "0"),
        };
        let (neg, digits) = match num.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, num.strip_prefix('+').unwrap_or(num)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let exp_digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        if int.is_empty() && frac.is_empty() || !int.chars().chain(frac.chars()).chain(exp_digits.chars()).all(|c| c.is_ascii_digit()) || exp_digits.is_empty() {
            return None;
        }
        // An exponent too long for i64 is huge either way: clamp it (the value saturates).
        // Clamped: every exponent past ±2^40 gives the same saturated value, and the arithmetic
        // below stays far from overflow.
        let exp: i64 = exp.parse::<i64>().unwrap_or(if exp.starts_with('-') { i64::MIN } else { i64::MAX }).clamp(-(1 << 40), 1 << 40);
        let all: String = format!("{int}{frac}");
        let Some(first) = all.find(|c| c != '0') else { return Some(Decimal { mantissa: 0, scale: 0 }) };
        let sig = &all[first..];
        // value = 0.sig × 10^top, where top counts the integer digits of the value.
        let top = (int.len() as i64 - first as i64).saturating_add(exp);
        if top > 38 {
            let m = if neg { i128::MIN } else { i128::MAX };
            return Some(Decimal { mantissa: m, scale: 0 });
        }
        // Keep digits down to 10^-scale, with scale ≤ 36 and at most 38 significant digits.
        let scale = (MAX_DIGITS as i64).min(38 - top);
        let keep = (top + scale).clamp(0, sig.len() as i64) as usize;
        let dropped = sig[keep..].bytes().any(|b| b != b'0') || top + scale < 0;
        let kept = &sig[..keep];
        let mut mantissa: i128 = if kept.is_empty() { 0 } else { kept.parse().ok()? };
        // Pad when the kept digits end above 10^-scale.
        let pad = (top + scale - keep as i64).max(0) as u32;
        mantissa = mantissa.checked_mul(10i128.checked_pow(pad)?)?;
        if neg {
            mantissa = -mantissa - i128::from(dropped);
        }
        Some(Decimal { mantissa, scale: scale.max(0) as u32 })
    }

    fn rescale(&self, scale: u32) -> Option<i128> {
        if scale >= self.scale {
            self.mantissa.checked_mul(10i128.checked_pow(scale - self.scale)?)
        } else {
            Some(self.mantissa.div_euclid(10i128.pow(self.scale - scale)))
        }
    }

    /// The implicit range of a search value (search.html#number): ± half a unit of its last
    /// digit. `100` → [99.5, 100.5), `1.50` → [1.495, 1.505).
    pub fn implicit_range(&self) -> Option<(Decimal, Decimal)> {
        let m = self.mantissa.checked_mul(10)?;
        Some((Decimal { mantissa: m.checked_sub(5)?, scale: self.scale + 1 }, Decimal { mantissa: m.checked_add(5)?, scale: self.scale + 1 }))
    }

    /// Order-preserving 16-byte key at [`KEY_SCALE`] (saturating outside the range).
    pub fn key(&self) -> [u8; 16] {
        let v = self.rescale(KEY_SCALE).unwrap_or(if self.mantissa < 0 { i128::MIN } else { i128::MAX });
        ((v as u128) ^ (1u128 << 127)).to_be_bytes()
    }

    /// An approximation, for geometry (`near`) only.
    pub fn to_f64(&self) -> f64 {
        self.mantissa as f64 / 10f64.powi(self.scale as i32)
    }

    pub fn from_key(k: &[u8]) -> Option<Decimal> {
        let v = (u128::from_be_bytes(k.try_into().ok()?) ^ (1u128 << 127)) as i128;
        Some(Decimal { mantissa: v, scale: KEY_SCALE })
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Decimal {}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let scale = self.scale.max(other.scale);
        match (self.rescale(scale), other.rescale(scale)) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => self.key().cmp(&other.key()),
        }
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let neg = self.mantissa < 0;
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = self.scale as usize;
        let padded = if digits.len() <= scale { format!("{}{digits}", "0".repeat(scale + 1 - digits.len())) } else { digits };
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{}{int}{}{frac}", if neg { "-" } else { "" }, if scale > 0 { "." } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn exact_parse_compare_ranges_and_keys() {
        assert_eq!(d("6.3").to_string(), "6.3");
        assert_eq!((d("6.30").mantissa, d("6.30").scale), (630, 2));
        assert_eq!(d("6.3").cmp(&d("6.30")), Ordering::Equal);
        assert!(d("-0.5") < d("0.25") && d("1e2") == d("100") && d("1.5E-1").to_string() == "0.15");
        let (lo, hi) = d("100").implicit_range().unwrap();
        assert_eq!((lo.to_string(), hi.to_string()), ("99.5".into(), "100.5".into()));
        let (lo, hi) = d("1.50").implicit_range().unwrap();
        assert_eq!((lo.to_string(), hi.to_string()), ("1.495".into(), "1.505".into()));
        let mut ks: Vec<[u8; 16]> = ["-3", "-0.001", "0", "6.29", "6.3", "1e20"].iter().map(|s| d(s).key()).collect();
        let sorted = ks.clone();
        ks.sort();
        assert_eq!(ks, sorted, "keys sort like the numbers");
        assert_eq!(Decimal::from_key(&d("6.3").key()).unwrap(), d("6.3"));
        assert!(Decimal::parse("abc").is_none() && Decimal::parse("1.2.3").is_none());
    }

    #[test]
    fn huge_exponents_and_edges_are_refused_at_once() {
        // Was: a loop of 2^31 multiplications by 10 (zero never overflows), seconds of CPU per value.
        for s in ["0e2147483647", "0e9223372036854775807", "1e2147483647", "0e-2147483648", "1e-99999999999", "0E77"] {
            assert!(Decimal::parse(s).is_none(), "{s}");
        }
        assert_eq!(d("0e5"), d("0"));
        assert_eq!(d("1e37").to_string(), format!("1{}", "0".repeat(37)));
        assert!(Decimal::parse("1e38").is_some() && Decimal::parse("1e39").is_none(), "i128 holds up to ~1.7e38");
        assert_eq!(d("12e-36").to_string(), format!("0.{}12", "0".repeat(34)));
        assert!(Decimal::parse("1e-37").is_none(), "more than 36 fraction digits");
        // Was: mantissa * 10 overflowed (a panic in debug builds, wrong matches in release).
        assert!(d("1e38").implicit_range().is_none());
        assert!(d("-1e38").implicit_range().is_none());
        assert!(d("1e37").implicit_range().is_some());
    }

    #[test]
    fn stored_values_out_of_range_saturate_in_the_index() {
        let sat = |s: &str| Decimal::parse_saturating(s).unwrap();
        // The official R4 example Observation-decimal holds these.
        assert_eq!(sat("1.000000000000000000e-245"), d("0"));
        assert_eq!(sat("-1.000000000000000000e-245").to_string(), format!("-0.{}1", "0".repeat(35)));
        assert_eq!(sat("-1.000000000000000000e+245").mantissa, i128::MIN);
        assert_eq!(sat("1e245").mantissa, i128::MAX);
        assert_eq!(sat("0e2147483647"), d("0"));
        assert_eq!(sat("7e99999999999999999999999").mantissa, i128::MAX);
        assert_eq!(sat("7e-99999999999999999999999"), d("0"));
        // Exponents at the ends of i64: no overflow (was: `38 - top` overflowed, a panic at apply).
        assert_eq!(sat("1e-9223372036854775808"), d("0"));
        assert_eq!(sat("-1e-9223372036854775808").to_string(), format!("-0.{}1", "0".repeat(35)));
        assert_eq!(sat("1e9223372036854775807").mantissa, i128::MAX);
        assert_eq!(sat("6.3"), d("6.3"), "exact values are exact");
        let long = format!("0.{}", "1".repeat(40));
        assert_eq!(sat(&long).to_string(), format!("0.{}", "1".repeat(36)), "rounded toward -inf at 36 fraction digits");
        let neg_long = format!("-0.{}", "1".repeat(40));
        assert_eq!(sat(&neg_long).to_string(), format!("-0.{}2", "1".repeat(35)));
        let big = "123456789012345678901234567890123456.789";
        assert_eq!(sat(big).to_string(), "123456789012345678901234567890123456.78", "38 significant digits kept");
        assert!(Decimal::parse_saturating("1e").is_none() && Decimal::parse_saturating("x").is_none() && Decimal::parse_saturating("1.2.3").is_none());
        // Order survives saturation.
        let vals = ["-1e245", "-1e30", "-1e-245", "0", "1e-245", "1e-30", "1e30", "1e245"];
        let keys: Vec<[u8; 16]> = vals.iter().map(|v| sat(v).key()).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{vals:?}");
    }
}
