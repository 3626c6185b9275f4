//! Bearer tokens and join tokens.
//!
//! A token is `<id>.<secret>`: a 6-character id, public (it names the token in
//! lists, logs and the audit log), and a 32-character secret of which the
//! master keeps only the SHA-256. Both are lowercase letters and digits, so a
//! token survives shells, URLs and config files unquoted.
//!
//! A join token adds the SHA-256 fingerprint of the cluster CA:
//! `wasmlet-join:<64 hex digits>:<id>.<secret>`. A joining agent trusts the
//! master only when the master's certificate chain holds that CA, before it
//! sends anything (no trust on first use).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::pki::Fingerprint;
use crate::{Error, Result};

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 32;
const JOIN_PREFIX: &str = "wasmlet-join";

/// A bearer token: `<id>.<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl Token {
    /// A new random token.
    pub fn generate() -> Result<Token> {
        Ok(Token { id: random_text(ID_LEN)?, secret: random_text(SECRET_LEN)? })
    }

    /// The token of a bearer text: `<id>.<secret>`, or a whole join token (its last part).
    pub fn from_bearer(text: &str) -> Result<Token> {
        text.trim().rsplit(':').next().unwrap_or_default().parse()
    }

    /// The SHA-256 of the secret, in hex: what the master stores.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }

    /// Whether this token's secret has the stored hash (in constant time).
    pub fn matches(&self, stored_hash: &str) -> bool {
        constant_time_eq(self.secret_hash().as_bytes(), stored_hash.as_bytes())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

/// Never prints the secret.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}.…)", self.id)
    }
}

impl FromStr for Token {
    type Err = Error;

    fn from_str(text: &str) -> Result<Token> {
        let invalid = |why: &str| Error::Invalid(format!("not a wasmlet token ({why}); tokens look like `abc123.<32 letters and digits>`"));
        let (id, secret) = text.trim().split_once('.').ok_or_else(|| invalid("no `.` between id and secret"))?;
        let valid = |part: &str, len: usize| part.len() == len && part.bytes().all(|b| ALPHABET.contains(&b));
        if !valid(id, ID_LEN) {
            return Err(invalid("the id is not 6 lowercase letters and digits"));
        }
        if !valid(secret, SECRET_LEN) {
            return Err(invalid("the secret is not 32 lowercase letters and digits"));
        }
        Ok(Token { id: id.to_string(), secret: secret.to_string() })
    }
}

/// A join token: the CA a joining agent must find in the master's chain, and the token it then presents.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca: Fingerprint,
    pub token: Token,
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_PREFIX}:{}:{}", self.ca, self.token)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}, {:?})", self.ca, self.token)
    }
}

impl FromStr for JoinToken {
    type Err = Error;

    fn from_str(text: &str) -> Result<JoinToken> {
        let mut parts = text.trim().splitn(3, ':');
        let (Some(JOIN_PREFIX), Some(ca), Some(token)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::Invalid(format!(
                "not a join token: join tokens look like `{JOIN_PREFIX}:<sha256 of the cluster CA>:<id>.<secret>` (`wasmlet-master join-command` prints the first one; `wasmlet-master token create` makes more)"
            )));
        };
        let ca = ca.parse().map_err(|e| Error::Invalid(format!("the join token's CA fingerprint: {e}")))?;
        Ok(JoinToken { ca, token: token.parse()? })
    }
}

/// SHA-256 of a secret, lowercase hex.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `len` characters of [`ALPHABET`] from the OS's randomness, without modulo bias.
fn random_text(len: usize) -> Result<String> {
    let mut text = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while text.len() < len {
        getrandom::fill(&mut buf).map_err(|e| Error::Invalid(format!("the OS gave no randomness: {e}")))?;
        // 252 = 7 × 36: bytes at or above it would favour the first letters.
        text.extend(buf.iter().filter(|&&b| b < 252).map(|&b| ALPHABET[(b % 36) as usize] as char).take(len - text.len()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_hide_their_secret() {
        let token = Token::generate().unwrap();
        let text = token.to_string();
        assert_eq!(text.len(), 39);
        assert_eq!(text.parse::<Token>().unwrap(), token);
        assert!(!format!("{token:?}").contains(&token.secret));
        assert!(token.matches(&token.secret_hash()));
        assert!(!token.matches(&Token::generate().unwrap().secret_hash()));
        assert_ne!(Token::generate().unwrap(), token);
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        for (text, why) in [
            ("abc123", "no `.`"),
            ("ABC123.abcdefghijklmnopqrstuvwxyz012345", "the id"),
            ("abc123.short", "the secret"),
            ("abc12.abcdefghijklmnopqrstuvwxyz012345", "the id"),
        ] {
            let error = text.parse::<Token>().unwrap_err().to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
    }

    #[test]
    fn join_tokens_carry_the_ca_fingerprint() {
        let ca = Fingerprint::of(b"a CA certificate");
        let join = JoinToken { ca, token: Token::generate().unwrap() };
        let text = join.to_string();
        assert!(text.starts_with("wasmlet-join:") && text.contains(&ca.to_string()));
        assert_eq!(text.parse::<JoinToken>().unwrap(), join);
        assert_eq!(Token::from_bearer(&text).unwrap(), join.token);
        assert_eq!(Token::from_bearer(&join.token.to_string()).unwrap(), join.token);
        let plain = join.token.to_string();
        assert!(plain.parse::<JoinToken>().unwrap_err().to_string().contains("not a join token"));
        let short = format!("wasmlet-join:abcd:{plain}");
        assert!(short.parse::<JoinToken>().unwrap_err().to_string().contains("fingerprint"));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
