//! Resource quantities in the Kubernetes notation: CPU in cores or millicores
//! (`2`, `0.5`, `250m`), byte amounts with decimal or binary suffixes
//! (`500M`, `128Mi`, `1Gi`, `1e3`, plain bytes).
//!
//! Values are kept as exact integers (millicores, bytes) so that sums and
//! comparisons in the scheduler never round.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Why a quantity string was refused. The message names the text and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity `{text}`: {reason}")]
pub struct QuantityError {
    pub text: String,
    pub reason: String,
}

impl QuantityError {
    fn new(text: &str, reason: impl Into<String>) -> Self {
        QuantityError { text: text.to_string(), reason: reason.into() }
    }
}

/// Suffixes accepted after the number, with their multiplier expressed as a
/// fraction `num / den` so milli stays exact.
const SUFFIXES: &[(&str, u128, u128)] = &[
    ("Ki", 1 << 10, 1),
    ("Mi", 1 << 20, 1),
    ("Gi", 1 << 30, 1),
    ("Ti", 1 << 40, 1),
    ("Pi", 1 << 50, 1),
    ("Ei", 1 << 60, 1),
    ("m", 1, 1000),
    ("k", 1_000, 1),
    ("M", 1_000_000, 1),
    ("G", 1_000_000_000, 1),
    ("T", 1_000_000_000_000, 1),
    ("P", 1_000_000_000_000_000, 1),
    ("E", 1_000_000_000_000_000_000, 1),
];

const SUFFIX_LIST: &str = "m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei";

/// Parses a quantity into thousandths of its unit (milli-units), exactly.
fn parse_milli(text: &str) -> Result<u128, QuantityError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(QuantityError::new(text, "empty value"));
    }
    if s.starts_with('-') {
        return Err(QuantityError::new(text, "negative quantities are not allowed"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let number_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, rest) = s.split_at(number_end);
    if number.is_empty() || number == "." {
        return Err(QuantityError::new(text, "expected a number such as `2`, `0.5` or `128`"));
    }
    let mut parts = number.split('.');
    let whole = parts.next().unwrap_or_default();
    let frac = parts.next().unwrap_or_default();
    if parts.next().is_some() {
        return Err(QuantityError::new(text, format!("malformed number `{number}` (more than one decimal point)")));
    }

    // Value as mantissa / 10^scale; trailing zeros of the fraction change nothing.
    let frac = frac.trim_end_matches('0');
    let digits = format!("{whole}{frac}");
    let mantissa: u128 = digits.parse().map_err(|_| QuantityError::new(text, "number is too large"))?;
    let mut scale = frac.len() as u32;

    let suffix = SUFFIXES.iter().find(|(name, _, _)| *name == rest);
    let (num, den) = if rest.is_empty() {
        (1, 1)
    } else if let Some(&(_, num, den)) = suffix {
        (num, den)
    } else if let Some(exp) = rest.strip_prefix(['e', 'E']).filter(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())) {
        let exp: u32 = exp.parse().map_err(|_| QuantityError::new(text, format!("malformed exponent `{rest}`")))?;
        if exp > 30 {
            return Err(QuantityError::new(text, "exponent is too large"));
        }
        (10u128.pow(exp), 1)
    } else {
        return Err(QuantityError::new(text, format!("unknown suffix `{rest}` (expected one of {SUFFIX_LIST}, or none)")));
    };

    // milli = mantissa * num * 1000 / (den * 10^scale), exactly: the factors
    // common to the multiplier and the divisor cancel before anything is
    // multiplied, so only a value that is itself too large overflows.
    let overflow = || QuantityError::new(text, "value is too large");
    let precision = || QuantityError::new(text, "more precision than a thousandth of a unit");
    let multiplier = num * 1000;
    let shared = gcd(multiplier, den);
    let (mut multiplier, den) = (multiplier / shared, den / shared);
    while scale > 0 && multiplier.is_multiple_of(10) {
        multiplier /= 10;
        scale -= 1;
    }
    // A divisor beyond u128 exceeds the mantissa: what is left is a fraction of a thousandth.
    let divisor = 10u128.checked_pow(scale).and_then(|p| p.checked_mul(den)).ok_or_else(precision)?;
    let shared = gcd(multiplier, divisor);
    let (multiplier, divisor) = (multiplier / shared, divisor / shared);
    if !mantissa.is_multiple_of(divisor) {
        return Err(precision());
    }
    (mantissa / divisor).checked_mul(multiplier).ok_or_else(overflow)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// CPU in millicores: `1` core = `1000m`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpu(u64);

impl Cpu {
    pub const ZERO: Cpu = Cpu(0);

    pub const fn from_millis(millis: u64) -> Self {
        Cpu(millis)
    }

    pub const fn from_cores(cores: u64) -> Self {
        Cpu(cores * 1000)
    }

    pub const fn millis(self) -> u64 {
        self.0
    }

    pub fn saturating_sub(self, other: Cpu) -> Cpu {
        Cpu(self.0.saturating_sub(other.0))
    }

    pub fn saturating_add(self, other: Cpu) -> Cpu {
        Cpu(self.0.saturating_add(other.0))
    }
}

impl FromStr for Cpu {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let milli = parse_milli(s)?;
        u64::try_from(milli).map(Cpu).map_err(|_| QuantityError::new(s, "value is too large"))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) { write!(f, "{}", self.0 / 1000) } else { write!(f, "{}m", self.0) }
    }
}

/// An amount of bytes (memory, storage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(u64);

impl Bytes {
    pub const ZERO: Bytes = Bytes(0);

    pub const fn new(bytes: u64) -> Self {
        Bytes(bytes)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    pub fn saturating_sub(self, other: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(other.0))
    }

    pub fn saturating_add(self, other: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(other.0))
    }

    /// Rounded for people, in binary units: `3.2Gi`, `812Mi`, `100Mi`, `512`.
    pub fn human(self) -> String {
        const UNITS: &[(&str, u64)] =
            &[("Ei", 1 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
        for (suffix, unit) in UNITS {
            if self.0 >= *unit {
                let value = self.0 as f64 / *unit as f64;
                let text = if value >= 100.0 || self.0.is_multiple_of(*unit) { format!("{value:.0}") } else { format!("{value:.1}") };
                return format!("{text}{suffix}");
            }
        }
        self.0.to_string()
    }
}

impl FromStr for Bytes {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let milli = parse_milli(s)?;
        if milli % 1000 != 0 {
            return Err(QuantityError::new(s, "a byte amount must be a whole number of bytes"));
        }
        u64::try_from(milli / 1000).map(Bytes).map_err(|_| QuantityError::new(s, "value is too large"))
    }
}

impl fmt::Display for Bytes {
    /// The largest binary suffix that represents the value exactly, else plain bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: &[(&str, u64)] =
            &[("Ei", 1 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
        if self.0 != 0 {
            for (suffix, unit) in UNITS {
                if self.0.is_multiple_of(*unit) {
                    return write!(f, "{}{suffix}", self.0 / unit);
                }
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Serde for both: a string in the notation above; plain JSON/YAML numbers are
/// accepted too (`memory: 1048576`, `cpu: 2`).
macro_rules! quantity_serde {
    ($ty:ty, $what:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        v.to_string().parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        v.to_string().parse().map_err(E::custom)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        v.to_string().parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_any(Visitor)
            }
        }
    };
}

quantity_serde!(Cpu, "a CPU quantity such as `250m`, `0.5` or `2`");
quantity_serde!(Bytes, "a byte quantity such as `128Mi`, `1Gi`, `500M` or `1048576`");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_cores_and_millicores() {
        assert_eq!("250m".parse::<Cpu>().unwrap().millis(), 250);
        assert_eq!("2".parse::<Cpu>().unwrap().millis(), 2000);
        assert_eq!("0.5".parse::<Cpu>().unwrap().millis(), 500);
        assert_eq!("1.25".parse::<Cpu>().unwrap().millis(), 1250);
        assert_eq!("1e3m".parse::<Cpu>().map(|c| c.millis()).ok(), None, "exponent and suffix do not mix");
        assert_eq!("1.000000000000000000000000000000000000000000".parse::<Cpu>().unwrap().millis(), 1000, "trailing zeros are nothing");
    }

    #[test]
    fn tiny_fractions_are_too_precise_whatever_their_length() {
        // Found by fuzzing: the denominator 1000 * 10^37 overflowed (a panic, or a wrong value in release builds).
        let tiny = format!(".{}m", "2".repeat(37));
        let err = tiny.parse::<Cpu>().unwrap_err().to_string();
        assert!(err.contains("more precision than a thousandth"), "{err}");
        let err = format!("0.{}1", "0".repeat(40)).parse::<Bytes>().unwrap_err().to_string();
        assert!(err.contains("more precision than a thousandth"), "{err}");
    }

    #[test]
    fn cpu_prints_in_canonical_form() {
        assert_eq!(Cpu::from_millis(250).to_string(), "250m");
        assert_eq!(Cpu::from_millis(2000).to_string(), "2");
        assert_eq!("0.5".parse::<Cpu>().unwrap().to_string(), "500m");
    }

    #[test]
    fn bytes_parse_decimal_binary_and_plain() {
        assert_eq!("128Mi".parse::<Bytes>().unwrap().get(), 128 << 20);
        assert_eq!("1Gi".parse::<Bytes>().unwrap().get(), 1 << 30);
        assert_eq!("500M".parse::<Bytes>().unwrap().get(), 500_000_000);
        assert_eq!("1000".parse::<Bytes>().unwrap().get(), 1000);
        assert_eq!("1e3".parse::<Bytes>().unwrap().get(), 1000);
        assert_eq!("0.5Gi".parse::<Bytes>().unwrap().get(), 1 << 29);
        assert_eq!("1.5k".parse::<Bytes>().unwrap().get(), 1500);
    }

    #[test]
    fn bytes_print_with_the_largest_exact_binary_suffix() {
        assert_eq!(Bytes::new(128 << 20).to_string(), "128Mi");
        assert_eq!(Bytes::new(1 << 30).to_string(), "1Gi");
        assert_eq!(Bytes::new(500_000_000).to_string(), "500000000");
        assert_eq!(Bytes::new(0).to_string(), "0");
        for s in ["128Mi", "3Gi", "1000", "7Ki"] {
            assert_eq!(s.parse::<Bytes>().unwrap().to_string(), s, "round trip of {s}");
        }
    }

    #[test]
    fn human_form_rounds_in_binary_units() {
        assert_eq!(Bytes::new(100 << 20).human(), "100Mi");
        assert_eq!(Bytes::new((3 << 30) + (1 << 29)).human(), "3.5Gi");
        assert_eq!(Bytes::new(512).human(), "512");
    }

    #[test]
    fn bad_quantities_are_refused_with_the_reason() {
        let cases = [
            ("12Qi", "unknown suffix `Qi`"),
            ("-1", "negative"),
            ("1.5.5", "more than one decimal point"),
            ("", "empty"),
            ("Mi", "expected a number"),
            ("1.5", "whole number of bytes"),
            ("99999999999999999999Ei", "too large"),
        ];
        for (text, expected) in cases {
            let err = text.parse::<Bytes>().expect_err(text);
            assert!(err.to_string().contains(expected), "{text}: {err}");
            assert!(err.to_string().contains(&format!("`{text}`")), "{err} names the input");
        }
        assert!("0.0001".parse::<Cpu>().unwrap_err().to_string().contains("precision"));
    }

    #[test]
    fn serde_accepts_strings_and_numbers() {
        let b: Bytes = serde_json::from_str("\"64Mi\"").unwrap();
        assert_eq!(b.get(), 64 << 20);
        let b: Bytes = serde_json::from_str("4096").unwrap();
        assert_eq!(b.get(), 4096);
        let c: Cpu = serde_json::from_str("0.25").unwrap();
        assert_eq!(c.millis(), 250);
        assert_eq!(serde_json::to_string(&Cpu::from_millis(1500)).unwrap(), "\"1500m\"");
        let err = serde_json::from_str::<Bytes>("\"12Qi\"").unwrap_err();
        assert!(err.to_string().contains("unknown suffix"), "{err}");
    }
}
