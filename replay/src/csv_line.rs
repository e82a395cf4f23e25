//! Splits one line into fields. RFC 4180 quoting applies within the line (quoted commas,
//! doubled quotes), but a record never spans lines: a quote left open at the end of the
//! line makes the line malformed, so one bad quote cannot swallow the lines after it.

use std::borrow::Cow;

/// The line breaks RFC 4180 quoting inside one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Splits `line` (without its terminator) into `out`, which is cleared first.
pub fn split_fields<'a>(line: &'a [u8], out: &mut Vec<Cow<'a, [u8]>>) -> Result<(), Malformed> {
    out.clear();
    if memchr::memchr(b'"', line).is_none() {
        out.extend(line.split(|&c| c == b',').map(Cow::Borrowed));
        return Ok(());
    }
    let mut i = 0;
    loop {
        if line.get(i) == Some(&b'"') {
            let (field, next) = quoted(line, i + 1)?;
            out.push(field);
            i = next;
        } else {
            let end = memchr::memchr(b',', &line[i..]).map_or(line.len(), |p| i + p);
            let field = &line[i..end];
            if field.contains(&b'"') {
                return Err(Malformed); // a quote inside an unquoted field
            }
            out.push(Cow::Borrowed(field));
            i = end;
        }
        match line.get(i) {
            None => return Ok(()),
            Some(b',') => i += 1,
            Some(_) => return Err(Malformed), // text after a closing quote
        }
    }
}

/// A quoted field whose content starts at `start`; returns it and the index after the
/// closing quote.
fn quoted(line: &[u8], start: usize) -> Result<(Cow<'_, [u8]>, usize), Malformed> {
    let mut owned: Option<Vec<u8>> = None;
    let mut i = start;
    let mut seg = start;
    loop {
        let q = memchr::memchr(b'"', &line[i..]).ok_or(Malformed)? + i;
        if line.get(q + 1) == Some(&b'"') {
            owned
                .get_or_insert_with(Vec::new)
                .extend_from_slice(&line[seg..=q]);
            i = q + 2;
            seg = i;
            continue;
        }
        let field = match owned {
            None => Cow::Borrowed(&line[start..q]),
            Some(mut v) => {
                v.extend_from_slice(&line[seg..q]);
                Cow::Owned(v)
            }
        };
        return Ok((field, q + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Result<Vec<String>, Malformed> {
        let mut out = Vec::new();
        split_fields(line.as_bytes(), &mut out)?;
        Ok(out
            .iter()
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
            .collect())
    }

    #[test]
    fn plain_and_quoted_fields() {
        assert_eq!(split("a,b,,c").unwrap(), vec!["a", "b", "", "c"]);
        assert_eq!(split("").unwrap(), vec![""]);
        assert_eq!(split("a,").unwrap(), vec!["a", ""]);
        assert_eq!(split(r#"a,"b,c",d"#).unwrap(), vec!["a", "b,c", "d"]);
        assert_eq!(
            split(r#""say ""hi""",x"#).unwrap(),
            vec![r#"say "hi""#, "x"]
        );
        assert_eq!(split(r#""""#).unwrap(), vec![""]);
        assert_eq!(split(r#"a,"""#).unwrap(), vec!["a", ""]);
        assert_eq!(split("\"x\",\"\"").unwrap(), vec!["x", ""]);
        assert_eq!(split("\"\"\"\"").unwrap(), vec!["\""]); // four quotes: one literal quote
    }

    #[test]
    fn broken_quoting_is_malformed() {
        assert_eq!(split(r#"a,"b,c"#), Err(Malformed)); // open at end of line
        assert_eq!(split(r#"a,"b"c,d"#), Err(Malformed)); // text after closing quote
        assert_eq!(split(r#"a,b"c,d"#), Err(Malformed)); // quote inside unquoted field
        assert_eq!(split("\"\"\"\"\""), Err(Malformed)); // five quotes: never closed
    }
}
