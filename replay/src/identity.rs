//! An input's identity: a hash of its whole content and its number of lines, from one
//! streaming pass. The hash names the input in event ids, so the same bytes under any path
//! give the same ids, and any change anywhere in the file gives others. The line count is
//! the highest line number the reader can give an event (the header is line 1), so a
//! consumer can tell an id that no line of the input could have.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use xxhash_rust::xxh3::Xxh3Default;

/// What identifies an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputIdentity {
    /// xxh3 (64-bit) of every byte of the input.
    pub source: u64,
    /// Lines as the reader numbers them: each `\n` ends one, and a last line without one
    /// counts too. The header is line 1, so events have lines 2 to `lines`.
    pub lines: u64,
}

/// Bytes read at a time: small enough to stay in cache between hashing and counting.
const BUF_BYTES: usize = 256 * 1024;

/// Identifies the file at `path` (reads it once, whole).
pub fn identify(path: &Path) -> io::Result<InputIdentity> {
    identify_reader(File::open(path)?)
}

/// Identifies everything `input` yields.
pub fn identify_reader(mut input: impl Read) -> io::Result<InputIdentity> {
    let mut hash = Xxh3Default::new();
    let mut buf = vec![0u8; BUF_BYTES];
    let (mut newlines, mut last) = (0u64, None);
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let bytes = &buf[..n];
        hash.update(bytes);
        newlines += memchr::memchr_iter(b'\n', bytes).count() as u64;
        last = bytes.last().copied();
    }
    Ok(InputIdentity {
        source: hash.digest(),
        lines: newlines + u64::from(last.is_some_and(|b| b != b'\n')),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::{read_all, ReaderConfig};

    const HEADER: &str =
        "event_time,order_id,product_id,category_id,category_code,brand,price,user_id";

    fn line(i: u64) -> String {
        format!("2020-04-24 11:50:39 UTC,{i},1515966223509089906,2268105426648170900,electronics.tablet,samsung,162.01,1515915625441993984")
    }

    /// The highest line number the reader gives, over events and rejects.
    fn highest_line(text: &str) -> u64 {
        let all = read_all(text.as_bytes(), &ReaderConfig::default()).unwrap();
        let events = all.events.iter().map(|e| e.line);
        events
            .chain(all.rejects.iter().map(|r| r.line))
            .max()
            .unwrap_or(1)
    }

    #[test]
    fn lines_are_the_readers_highest_line_number() {
        let body = (0..5).map(line).collect::<Vec<_>>().join("\n");
        for text in [
            format!("{HEADER}\n{body}\n"),
            format!("{HEADER}\n{body}"),
            format!("{HEADER}\r\n{}\r\n", body.replace('\n', "\r\n")),
            // Blank lines in the middle count; a broken last line without `\n` too.
            format!("{HEADER}\n{}\n\n\n{}\nbroken", line(1), line(2)),
        ] {
            let id = identify_reader(text.as_bytes()).unwrap();
            assert_eq!(id.lines, highest_line(&text), "{text:?}");
        }
        assert_eq!(identify_reader(HEADER.as_bytes()).unwrap().lines, 1);
        assert_eq!(identify_reader(&b""[..]).unwrap().lines, 0);
    }

    #[test]
    fn lines_are_counted_across_reads() {
        // More than one buffer, with a line end on a buffer's last byte.
        let mut text = String::from(HEADER);
        text.push('\n');
        while text.len() < 3 * BUF_BYTES {
            text.push_str(&line(text.len() as u64));
            text.push('\n');
        }
        text.truncate(text[..2 * BUF_BYTES].rfind('\n').unwrap() + 1);
        let id = identify_reader(text.as_bytes()).unwrap();
        assert_eq!(id.lines, highest_line(&text));
        assert_eq!(id.lines, text.matches('\n').count() as u64);
        // Hashing in pieces equals hashing at once.
        assert_eq!(id.source, xxhash_rust::xxh3::xxh3_64(text.as_bytes()));
    }

    #[test]
    fn an_edit_in_the_middle_is_another_input_and_a_copy_is_the_same() {
        // Longer than the first and last 64 KiB that an input's identity once hashed.
        let mut text = format!("{HEADER}\n");
        for i in 0..4_000 {
            text.push_str(&line(i));
            text.push('\n');
        }
        assert!(text.len() > 3 * 64 * 1024);
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let original = identify(&write("a.csv", text.as_bytes())).unwrap();
        // The same bytes elsewhere: the same input.
        let copy = identify(&write("copy.csv", text.as_bytes())).unwrap();
        assert_eq!(copy, original);
        // One price changed in the middle: same length, same edges, another input.
        let mid = text.len() / 2;
        let at = mid + text[mid..].find("162.01").unwrap();
        let mut edited = text.clone().into_bytes();
        edited[at..at + 6].copy_from_slice(b"162.02");
        assert_eq!(edited.len(), text.len());
        let changed = identify(&write("b.csv", &edited)).unwrap();
        assert_ne!(changed.source, original.source);
        assert_eq!(changed.lines, original.lines);
        assert_eq!(original.lines, 4_001);
    }
}
