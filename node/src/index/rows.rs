//! The key layout of the embedded search index's rows in the `state` tree. All row encodings
//! live here; the posting lists stored under them are
//! [`super::posting`]'s.
//!
//! | key | meaning |
//! |---|---|
//! | `x` type `\0` code `\0` kind parts… block | the doc numbers of one block with that value of `code` |
//! | `x` type `\0` `\0` `*` block | every live resource of the type |
//! | `y` type `\0` id | the list of the resource's rows (to replace them on update/delete) |
//!
//! String parts are escaped (`\0` → `\1\1`, `\1` → `\1\2`, order kept) and end with `\0`;
//! numbers and dates are fixed-width order-preserving binaries; the 4-byte block number follows
//! the last part. Kinds: `t` token code, system (empty when none) · `x` token text · `l`
//! normalized string, exact string · `d` date low, high · `k` date span class, low, high ·
//! `M` (no parts) two or more date values · `#` number · `q` quantity value · `c`
//! quantity code-or-unit, value · `Q` quantity system, code, value · `r` reference type, id ·
//! `R` literal reference · `u` uri · `o` identifier type system, type code, value · `i`
//! reference identifier value, system · `g` position latitude, longitude.


pub const ROW: u8 = b'x';
pub const REVERSE: u8 = b'y';

/// Appends `s` escaped and terminated, keeping byte order.
pub fn push_str(k: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            0 => k.extend_from_slice(&[1, 1]),
            1 => k.extend_from_slice(&[1, 2]),
            _ => k.push(b),
        }
    }
    k.push(0);
}

/// Order-preserving bytes of a signed 64-bit number.
pub fn i64_key(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn i64_from_key(b: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(b.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// `x` type `\0` code `\0`: the prefix of every row of one parameter.
pub fn param_rows(rtype: &str, code: &str) -> Vec<u8> {
    let mut k = vec![ROW];
    push_str(&mut k, rtype);
    push_str(&mut k, code);
    k
}

/// `x` type `\0` code `\0` kind: the prefix of every row of one parameter kind.
pub fn param_prefix(rtype: &str, code: &str, kind: u8) -> Vec<u8> {
    kind_prefix(&param_rows(rtype, code), kind)
}

/// Prefix of the rows of one parameter kind whose leading parts equal `parts` exactly.
pub fn exact_prefix(rtype: &str, code: &str, kind: u8, parts: &[&str]) -> Vec<u8> {
    base_exact(&param_rows(rtype, code), kind, parts)
}

/// The same under any base: [`param_rows`], or a composite's row prefix
/// ([`composite_base`]) under which its last component's rows are written like a plain parameter's.
pub fn kind_prefix(base: &[u8], kind: u8) -> Vec<u8> {
    let mut k = base.to_vec();
    k.push(kind);
    k
}

pub fn base_exact(base: &[u8], kind: u8, parts: &[&str]) -> Vec<u8> {
    let mut k = kind_prefix(base, kind);
    for p in parts {
        push_str(&mut k, p);
    }
    k
}

pub fn base_open(base: &[u8], kind: u8, text: &str) -> Vec<u8> {
    let mut k = base_exact(base, kind, &[text]);
    k.pop(); // no terminator: any continuation matches
    k
}

/// `x` type `\0` code `\0` `C` + the exact parts of a composite's leading components.
pub fn composite_base(rtype: &str, code: &str, leading: &[Vec<String>]) -> Vec<u8> {
    let mut k = param_rows(rtype, code);
    k.push(b'C');
    for parts in leading {
        for p in parts {
            push_str(&mut k, p);
        }
    }
    k
}

pub fn reverse_key(rtype: &str, id: &str) -> Vec<u8> {
    let mut k = vec![REVERSE];
    push_str(&mut k, rtype);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Upper bounds (µs) of the span of date range classes 0..=4 (a second, a day, 32 days, 367
/// days, 3,700 days); class 5 is unbounded (open-ended Periods and longer ranges).
pub const DATE_SPANS: [i64; 5] = [1_000_000, 86_400_000_000, 32 * 86_400_000_000, 367 * 86_400_000_000, 3_700 * 86_400_000_000];

/// The span class of `[low, high)`.
pub fn date_class(low: i64, high: i64) -> u8 {
    let span = high.saturating_sub(low);
    DATE_SPANS.iter().position(|max| span <= *max).unwrap_or(DATE_SPANS.len()) as u8
}

/// `x` type `\0` code `\0` `M`: the row of resources with two or more values of a date
/// parameter (a range query on one value at a time is exact for the others).
pub fn multi_date_row(rtype: &str, code: &str) -> Vec<u8> {
    kind_prefix(&param_rows(rtype, code), b'M')
}

/// `x` type `\0` `\0` `*`: the row every live resource of the type is in.
pub fn live_row(rtype: &str) -> Vec<u8> {
    kind_prefix(&param_rows(rtype, ""), b'*')
}
