//! C2SP signed notes (c2sp.org/signed-note) with Ed25519 signatures, and the checkpoint
//! body of c2sp.org/tlog-checkpoint.
//!
//! A signed note is the note text (ending in a newline), a blank line, then signature lines
//! `— <key name> base64(key ID || signature)`. The Ed25519 key ID is
//! `SHA-256(key name || 0x0A || 0x01 || public key)[:4]`, big-endian. A verifier key is
//! written `<name>+<key ID, 8 hex digits>+base64(0x01 || public key)`.
//!
//! Parsing is strict: valid UTF-8, no control characters but newline, key names without
//! spaces or `+`, canonical base64, and checkpoints without extension lines.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ED25519};
use thiserror::Error;

use super::merkle::{sha256, Hash};

/// The signature type byte of Ed25519 in key IDs and verifier keys.
pub const ED25519_TYPE: u8 = 0x01;

/// Verifiers must accept at least 16 signatures; this one accepts no more than that.
pub const MAX_SIGNATURES: usize = 16;

/// Errors of notes, verifier keys and checkpoints.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NoteError {
    /// The note's shape is wrong (message says where).
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// A verifier key string that does not parse.
    #[error("malformed verifier key: {0}")]
    BadKey(&'static str),
    /// No signature line is from the trusted key (name and ID).
    #[error("not signed by {name}+{id:08x}; signed by {others}")]
    UnknownKey {
        /// Trusted key name.
        name: String,
        /// Trusted key ID.
        id: u32,
        /// The signers that are present, `name+id` joined with `, `.
        others: String,
    },
    /// The trusted key's signature is present and does not verify.
    #[error("signature of {0} does not verify")]
    BadSignature(String),
    /// A checkpoint body that does not parse.
    #[error("malformed checkpoint: {0}")]
    BadCheckpoint(&'static str),
}

/// `SHA-256(name || 0x0A || 0x01 || public key)[:4]` as a big-endian `u32`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut buf = Vec::with_capacity(name.len() + 2 + 32);
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'\n');
    buf.push(ED25519_TYPE);
    buf.extend_from_slice(public_key);
    let h = sha256(&buf);
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

/// Whether `name` is a valid key name: non-empty, no Unicode space, no `+`, no control.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// An Ed25519 note verifier key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifierKey {
    /// Key name (this log's origin).
    pub name: String,
    /// Key ID.
    pub id: u32,
    /// Ed25519 public key.
    pub public_key: [u8; 32],
}

impl VerifierKey {
    /// The verifier of `public_key` under `name`.
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::BadKey("key name is empty or has a space or '+'"));
        }
        Ok(Self {
            name: name.to_string(),
            id: key_id(name, &public_key),
            public_key,
        })
    }

    /// Parses `<name>+<8 hex digits>+base64(0x01 || key)`, checking the ID against the key.
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        let s = s.trim_end_matches('\n');
        // The key data is base64, which may itself contain '+': split twice only.
        let mut parts = s.splitn(3, '+');
        let (Some(name), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadKey("expected name+id+key"));
        };
        if !valid_key_name(name) {
            return Err(NoteError::BadKey("bad key name"));
        }
        if id.len() != 8
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(NoteError::BadKey("key ID is not 8 lowercase hex digits"));
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| NoteError::BadKey("bad key ID"))?;
        let raw = B64
            .decode(data)
            .map_err(|_| NoteError::BadKey("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ED25519_TYPE {
            return Err(NoteError::BadKey("not an Ed25519 key (0x01 || 32 bytes)"));
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[1..]);
        let key = Self::new(name, pk)?;
        if key.id != id {
            return Err(NoteError::BadKey("key ID does not match the key"));
        }
        Ok(key)
    }

    /// Parses the text of a verifier key file (the `.pub` the device writes beside its
    /// signing key): one key string as [`VerifierKey::parse`] takes it, surrounding
    /// whitespace ignored. Reading the file is the caller's.
    pub fn from_file_text(text: &str) -> Result<Self, NoteError> {
        Self::parse(text.trim())
    }

    /// Checks an Ed25519 signature over `msg`.
    pub fn verify_raw(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(msg, sig)
            .is_ok()
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(ED25519_TYPE);
        raw.extend_from_slice(&self.public_key);
        write!(f, "{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }
}

/// One signature line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key ID.
    pub id: u32,
    /// Signature bytes (after the key ID).
    pub signature: Vec<u8>,
}

/// A parsed signed note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedNote {
    /// The note text, final newline included.
    pub text: String,
    /// Its signatures, in order.
    pub signatures: Vec<NoteSignature>,
}

impl SignedNote {
    /// Parses a signed note.
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        if s.chars().any(|c| c.is_control() && c != '\n') {
            return Err(NoteError::Malformed("control character"));
        }
        let Some(sep) = s.rfind("\n\n") else {
            return Err(NoteError::Malformed("no blank line before the signatures"));
        };
        let text = &s[..=sep];
        let sigs = &s[sep + 2..];
        if !sigs.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signature block does not end in a newline",
            ));
        }
        let mut signatures = Vec::new();
        for line in sigs[..sigs.len() - 1].split('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::Malformed("too many signatures"));
            }
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(NoteError::Malformed(
                    "signature line does not start with an em dash",
                ));
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed("signature line has no signature"));
            };
            if !valid_key_name(name) {
                return Err(NoteError::Malformed("bad key name in signature line"));
            }
            let raw = B64
                .decode(b64)
                .map_err(|_| NoteError::Malformed("signature is not base64"))?;
            if raw.len() < 5 {
                return Err(NoteError::Malformed("signature is too short"));
            }
            signatures.push(NoteSignature {
                name: name.to_string(),
                id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
                signature: raw[4..].to_vec(),
            });
        }
        if signatures.is_empty() {
            return Err(NoteError::Malformed("no signature"));
        }
        Ok(Self {
            text: text.to_string(),
            signatures,
        })
    }

    /// The note's text form.
    pub fn encode(&self) -> String {
        let mut s = self.text.clone();
        s.push('\n');
        for sig in &self.signatures {
            let mut raw = Vec::with_capacity(4 + sig.signature.len());
            raw.extend_from_slice(&sig.id.to_be_bytes());
            raw.extend_from_slice(&sig.signature);
            s.push_str(&format!("\u{2014} {} {}\n", sig.name, B64.encode(raw)));
        }
        s
    }

    /// Verifies the note against `key`: a signature with the key's name and ID must be
    /// present and valid (others are ignored, as the spec requires). Returns the text.
    pub fn verify(&self, key: &VerifierKey) -> Result<&str, NoteError> {
        let mine = self
            .signatures
            .iter()
            .find(|s| s.name == key.name && s.id == key.id);
        let Some(sig) = mine else {
            let others = self
                .signatures
                .iter()
                .map(|s| format!("{}+{:08x}", s.name, s.id))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(NoteError::UnknownKey {
                name: key.name.clone(),
                id: key.id,
                others,
            });
        };
        if !key.verify_raw(self.text.as_bytes(), &sig.signature) {
            return Err(NoteError::BadSignature(format!(
                "{}+{:08x}",
                key.name, key.id
            )));
        }
        Ok(&self.text)
    }
}

/// A tlog checkpoint: origin, tree size and root hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n`.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses a note text as a checkpoint (no extension lines).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let Some(body) = text.strip_suffix('\n') else {
            return Err(NoteError::BadCheckpoint("text does not end in a newline"));
        };
        let lines: Vec<&str> = body.split('\n').collect();
        let [origin, size, root] = lines[..] else {
            return Err(NoteError::BadCheckpoint(
                "expected exactly origin, size, root",
            ));
        };
        if origin.is_empty() {
            return Err(NoteError::BadCheckpoint("empty origin"));
        }
        let canonical = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        if !canonical {
            return Err(NoteError::BadCheckpoint("size is not a canonical decimal"));
        }
        let size = size
            .parse()
            .map_err(|_| NoteError::BadCheckpoint("size overflows"))?;
        let raw = B64
            .decode(root)
            .map_err(|_| NoteError::BadCheckpoint("root is not base64"))?;
        let root: Hash = raw
            .try_into()
            .map_err(|_| NoteError::BadCheckpoint("root is not 32 bytes"))?;
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
        })
    }

    /// Parses and verifies a signed checkpoint note against `key`; the origin must be the
    /// key's name.
    pub fn verify_note(note: &str, key: &VerifierKey) -> Result<Self, NoteError> {
        let n = SignedNote::parse(note)?;
        let text = n.verify(key)?;
        let cp = Self::parse(text)?;
        if cp.origin != key.name {
            return Err(NoteError::BadCheckpoint("origin is not the key's name"));
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn keypair() -> Ed25519KeyPair {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
    }

    fn sign(kp: &Ed25519KeyPair, key: &VerifierKey, text: &str) -> String {
        SignedNote {
            text: text.to_string(),
            signatures: vec![NoteSignature {
                name: key.name.clone(),
                id: key.id,
                signature: kp.sign(text.as_bytes()).as_ref().to_vec(),
            }],
        }
        .encode()
    }

    #[test]
    fn spec_example_note_parses_with_its_key_id() {
        // The example of c2sp.org/signed-note (signature not checked: no key given there).
        let note = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \
                    è subito sera.\n\n\u{2014} quasimodo.example/salvatore \
                    NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";
        let n = SignedNote::parse(note).unwrap();
        assert!(n.text.ends_with("è subito sera.\n"));
        assert!(n.text.contains("\n\n"), "the text may contain blank lines");
        assert_eq!(n.signatures[0].name, "quasimodo.example/salvatore");
        assert_eq!(n.signatures[0].id, 0x367b_a04b);
        assert_eq!(n.encode(), note);
    }

    #[test]
    fn go_sumdb_note_reference_vector_verifies() {
        // The published example of golang.org/x/mod/sumdb/note: key ID derivation, verifier
        // key encoding and Ed25519 note signatures interoperate with the reference.
        let key = VerifierKey::parse(
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        )
        .unwrap();
        assert_eq!(key.id, 0xc74f_20a3);
        let note = "If you think cryptography is the answer to your problem,\nthen you don't know \
                    what your problem is.\n\n\u{2014} PeterNeumann \
                    x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let n = SignedNote::parse(note).unwrap();
        assert!(n.verify(&key).unwrap().starts_with("If you think"));
        let tampered = note.replace("answer", "Answer");
        assert!(matches!(
            SignedNote::parse(&tampered).unwrap().verify(&key),
            Err(NoteError::BadSignature(_))
        ));
    }

    #[test]
    fn checkpoint_signed_and_verified_round_trips() {
        let kp = keypair();
        let pk: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
        let key = VerifierKey::new("example.com/log", pk).unwrap();
        assert_eq!(VerifierKey::parse(&key.to_string()).unwrap(), key);
        let cp = Checkpoint {
            origin: "example.com/log".into(),
            size: 42,
            root: [7; 32],
        };
        let note = sign(&kp, &key, &cp.body());
        assert_eq!(Checkpoint::verify_note(&note, &key).unwrap(), cp);

        let other = keypair();
        let opk: [u8; 32] = other.public_key().as_ref().try_into().unwrap();
        let okey = VerifierKey::new("example.com/log", opk).unwrap();
        let forged = sign(&other, &okey, &cp.body());
        assert!(matches!(
            Checkpoint::verify_note(&forged, &key),
            Err(NoteError::UnknownKey { .. })
        ));
        let altered = note.replace("\n42\n", "\n43\n");
        assert!(matches!(
            Checkpoint::verify_note(&altered, &key),
            Err(NoteError::BadSignature(_))
        ));
    }

    #[test]
    fn verifier_keys_whose_base64_holds_a_plus_round_trip() {
        for _ in 0..64 {
            let kp = keypair();
            let pk: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
            let key = VerifierKey::new("example.com/log", pk).unwrap();
            assert_eq!(VerifierKey::parse(&key.to_string()).unwrap(), key);
        }
    }

    #[test]
    fn malformed_checkpoints_and_keys_are_rejected() {
        for body in [
            "o\n042\nAAAA\n",
            "o\n1\n",
            "o\n1\nAAAA\n",
            "\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
            "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\next\n",
        ] {
            assert!(Checkpoint::parse(body).is_err(), "{body:?}");
        }
        for k in ["a+b", "a+0000000g+AQ==", "a b+00000000+AQ==", ""] {
            assert!(VerifierKey::parse(k).is_err(), "{k:?}");
        }
        assert!(SignedNote::parse("text\n\n- x AAAAAAA=\n").is_err());
        assert!(SignedNote::parse("text\n\n\u{2014} x AAAA\u{7}AAA=\n").is_err());
    }
}
