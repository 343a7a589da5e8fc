//! The checkpoint signing key: Ed25519, PKCS#8 v2 (the form `ring` generates), loaded from
//! its file or created there (mode 0600, never overwritten). Its verifier key is written
//! beside it as `<key file>.pub`: one line `<origin>+<key ID>+base64(0x01 || public key)`,
//! the C2SP / Go `note` verifier key string.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use swiotlb_shared::audit::{NoteError, VerifierKey};
use thiserror::Error;

/// Errors of loading or creating the signing key.
#[derive(Debug, Error)]
pub enum KeyError {
    /// Reading, creating or writing a key file failed.
    #[error("audit log I/O on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The key file holds something else.
    #[error("audit key {path}: not an Ed25519 PKCS#8 key")]
    NotEd25519 {
        /// The key file.
        path: PathBuf,
    },
    /// The origin cannot name a verifier key.
    #[error("audit key {path}")]
    Origin {
        /// The key file.
        path: PathBuf,
        /// Why the name is refused.
        #[source]
        source: NoteError,
    },
    /// The system gave no randomness to generate a key with.
    #[error("audit key {path}: no randomness to generate a key")]
    NoRandomness {
        /// The key file that was to be created.
        path: PathBuf,
    },
}

/// A loaded signing key and its verifier.
pub struct SigningKey {
    /// The key pair.
    pub pair: Ed25519KeyPair,
    /// Its verifier under the log's origin.
    pub verifier: VerifierKey,
}

/// `<key file>.pub`.
pub fn pub_path(key_path: &Path) -> PathBuf {
    let mut s = key_path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn key_err(path: &Path, source: io::Error) -> KeyError {
    KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The name checkpoints are signed under.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// This name, always.
    Given(&'a str),
    /// The name the key's `.pub` file already gives it, when that file names this key: a
    /// log keeps one origin across restarts of its device, as a verifier holding the
    /// `.pub` file needs; this name for a new key (or a `.pub` that is missing or names
    /// another key).
    Default(&'a str),
}

/// Loads the key at `path`, or creates it (0600) when absent; writes `path.pub`.
pub fn load_or_create(path: &Path, origin: Origin<'_>) -> Result<SigningKey, KeyError> {
    let pkcs8 = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(path)?,
        Err(e) => return Err(key_err(path, e)),
    };
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8))
        .map_err(|_| KeyError::NotEd25519 {
            path: path.to_path_buf(),
        })?;
    let mut pk = [0u8; 32];
    pk.copy_from_slice(pair.public_key().as_ref());
    let pub_file = pub_path(path);
    let existing = match origin {
        Origin::Given(_) => None,
        Origin::Default(_) => fs::read_to_string(&pub_file)
            .ok()
            .and_then(|t| VerifierKey::from_file_text(&t).ok())
            .filter(|k| k.public_key == pk),
    };
    let verifier = match (existing, origin) {
        (Some(k), _) => k,
        (None, Origin::Given(name) | Origin::Default(name)) => {
            VerifierKey::new(name, pk).map_err(|source| KeyError::Origin {
                path: path.to_path_buf(),
                source,
            })?
        }
    };
    write_pub(&pub_file, &verifier)?;
    Ok(SigningKey { pair, verifier })
}

fn create(path: &Path) -> Result<Vec<u8>, KeyError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| {
        KeyError::NoRandomness {
            path: path.to_path_buf(),
        }
    })?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| key_err(path, e))?;
    f.write_all(doc.as_ref()).map_err(|e| key_err(path, e))?;
    f.sync_all().map_err(|e| key_err(path, e))?;
    Ok(doc.as_ref().to_vec())
}

/// Writes the verifier key atomically (temp file, rename) unless it is already there.
fn write_pub(path: &Path, key: &VerifierKey) -> Result<(), KeyError> {
    let line = format!("{key}\n");
    if fs::read_to_string(path).ok().as_deref() == Some(line.as_str()) {
        return Ok(());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| key_err(&tmp, e))?;
    f.write_all(line.as_bytes()).map_err(|e| key_err(&tmp, e))?;
    f.sync_all().map_err(|e| key_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| key_err(path, e))
}
