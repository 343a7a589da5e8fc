//! The files of a log read as they grow, as `tail -F` reads a log: complete lines as they
//! come, a partial last line kept until its newline, and the next numbered file
//! (`<stem>.<NNNNNN>.<ext>`) taken once it appears. A file is read through the descriptor
//! opened on it, so renaming it while it is read changes nothing.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Bytes read at a time.
const CHUNK: usize = 1 << 16;

/// `<dir>/<stem>.<NNNNNN>.<ext>`: how the writer names the files of a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Numbered {
    /// The directory.
    pub dir: PathBuf,
    /// The stem.
    pub stem: String,
    /// The extension (without its dot).
    pub ext: String,
}

impl Numbered {
    /// The naming of the log whose base path is `base` (`<dir>/<stem>.<ext>`).
    pub fn of_base(base: &Path) -> Option<Self> {
        let name = base.file_name()?.to_str()?;
        let (stem, ext) = name.rsplit_once('.')?;
        if stem.is_empty() {
            return None;
        }
        Some(Self {
            dir: parent(base),
            stem: stem.into(),
            ext: ext.into(),
        })
    }

    /// The naming and index of a numbered file, or `None` when `path` is not one.
    pub fn of_file(path: &Path) -> Option<(Self, u32, usize)> {
        let name = path.file_name()?.to_str()?;
        let (rest, ext) = name.rsplit_once('.')?;
        let (stem, digits) = rest.rsplit_once('.')?;
        if stem.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let index = digits.parse().ok()?;
        let n = Self {
            dir: parent(path),
            stem: stem.into(),
            ext: ext.into(),
        };
        Some((n, index, digits.len()))
    }

    /// The file numbered `index`, its number `width` digits wide at least.
    pub fn file(&self, index: u32, width: usize) -> PathBuf {
        self.dir
            .join(format!("{}.{index:0width$}.{}", self.stem, self.ext))
    }

    /// The numbered files present, oldest first.
    pub fn present(&self) -> io::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let p = e?.path();
            if let Some((n, index, _)) = Self::of_file(&p) {
                if n == *self {
                    found.push((index, p));
                }
            }
        }
        found.sort();
        Ok(found.into_iter().map(|(_, p)| p).collect())
    }
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The file that follows `path` in its log, if `path` is a numbered file.
pub fn next_file(path: &Path) -> Option<PathBuf> {
    let (n, index, width) = Numbered::of_file(path)?;
    Some(n.file(index.checked_add(1)?, width))
}

/// One file being read.
pub struct Tail {
    /// Its path when opened.
    pub path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Complete lines read so far.
    pub lines: u64,
}

impl Tail {
    /// Opens `path` to read it from its start.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            file: File::open(path)?,
            buf: Vec::new(),
            lines: 0,
        })
    }

    /// Reads what has been appended since the last call and calls `f` with each complete
    /// line (its number from 1, its bytes without the newline). Returns whether anything
    /// was read; stops at the first error of `f`.
    pub fn read_lines<E>(
        &mut self,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<bool, ReadOr<E>> {
        let mut chunk = vec![0u8; CHUNK];
        let mut any = false;
        loop {
            let n = match self.file.read(&mut chunk) {
                Ok(0) => return Ok(any),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadOr::Read(e)),
            };
            any = true;
            self.buf.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            while let Some(nl) = self.buf[start..].iter().position(|b| *b == b'\n') {
                let end = start + nl;
                self.lines += 1;
                let r = f(self.lines, &self.buf[start..end]);
                start = end + 1;
                if let Err(e) = r {
                    self.buf.drain(..start);
                    return Err(ReadOr::Other(e));
                }
            }
            self.buf.drain(..start);
        }
    }

    /// The partial last line read so far (no newline yet).
    pub fn partial(&self) -> &[u8] {
        &self.buf
    }
}

/// A read error, or the line handler's.
#[derive(Debug)]
pub enum ReadOr<E> {
    /// Reading the file failed.
    Read(io::Error),
    /// The handler failed.
    Other(E),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn numbered_names_are_recognised_and_continued_and_others_are_not() {
        let (n, i, w) = Numbered::of_file(Path::new("/l/audit.000009.jsonl")).unwrap();
        assert_eq!(
            (n.stem.as_str(), n.ext.as_str(), i, w),
            ("audit", "jsonl", 9, 6)
        );
        assert_eq!(
            next_file(Path::new("/l/audit.000009.jsonl")).unwrap(),
            Path::new("/l/audit.000010.jsonl")
        );
        assert_eq!(
            next_file(Path::new("a.b.999999.jsonl")).unwrap(),
            Path::new("./a.b.1000000.jsonl")
        );
        for not in [
            "audit.jsonl",
            "audit.0x1.jsonl",
            ".000001.jsonl",
            "audit..jsonl",
            "x",
        ] {
            assert!(Numbered::of_file(Path::new(not)).is_none(), "{not}");
        }
        let b = Numbered::of_base(Path::new("/l/device.jsonl")).unwrap();
        assert_eq!(b.file(1, 6), Path::new("/l/device.000001.jsonl"));
        assert!(Numbered::of_base(Path::new("/l/noext")).is_none());
        assert!(next_file(Path::new("/l/a.4294967295.jsonl")).is_none());
    }

    #[test]
    fn a_partial_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.000001.jsonl");
        let mut w = File::create(&p).unwrap();
        w.write_all(b"one\ntw").unwrap();
        let mut t = Tail::open(&p).unwrap();
        let mut got = Vec::new();
        let mut take = |n: u64, l: &[u8]| -> Result<(), ()> {
            got.push((n, l.to_vec()));
            Ok(())
        };
        assert!(t.read_lines(&mut take).unwrap());
        assert_eq!(t.partial(), b"tw");
        assert!(!t.read_lines(&mut take).unwrap(), "nothing new");
        w.write_all(b"o\nthree\n").unwrap();
        // Renamed while read: the descriptor still reads it.
        std::fs::rename(&p, dir.path().join("moved")).unwrap();
        assert!(t.read_lines(&mut take).unwrap());
        assert!(t.partial().is_empty());
        assert_eq!(
            got,
            [
                (1, b"one".to_vec()),
                (2, b"two".to_vec()),
                (3, b"three".to_vec())
            ]
        );
    }
}
