//! Splits one line into fields. RFC 4180 quoting applies within the line (quoted commas,
//! doubled quotes), but a record never spans lines: a quote left open at the end of the
//! line makes the line malformed, so one bad quote cannot swallow the lines after it.

use std::borrow::Cow;

/// The line breaks RFC 4180 quoting inside one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Splits `line` (without its terminator) into `out`, which is cleared first. Quotes and
/// commas are ASCII, so every field is a valid slice of the line.
pub fn split_fields<'a>(line: &'a str, out: &mut Vec<Cow<'a, str>>) -> Result<(), Malformed> {
    out.clear();
    let bytes = line.as_bytes();
    if memchr::memchr(b'"', bytes).is_none() {
        let mut start = 0;
        for comma in memchr::memchr_iter(b',', bytes) {
            out.push(Cow::Borrowed(&line[start..comma]));
            start = comma + 1;
        }
        out.push(Cow::Borrowed(&line[start..]));
        return Ok(());
    }
    let mut i = 0;
    loop {
        if bytes.get(i) == Some(&b'"') {
            let (field, next) = quoted(line, i + 1)?;
            out.push(field);
            i = next;
        } else {
            let end = memchr::memchr(b',', &bytes[i..]).map_or(line.len(), |p| i + p);
            let field = &line[i..end];
            if field.contains('"') {
                return Err(Malformed); // a quote inside an unquoted field
            }
            out.push(Cow::Borrowed(field));
            i = end;
        }
        match bytes.get(i) {
            None => return Ok(()),
            Some(b',') => i += 1,
            Some(_) => return Err(Malformed), // text after a closing quote
        }
    }
}

/// A quoted field whose content starts at `start`; returns it and the index after the
/// closing quote.
fn quoted(line: &str, start: usize) -> Result<(Cow<'_, str>, usize), Malformed> {
    let bytes = line.as_bytes();
    let mut owned: Option<String> = None;
    let mut i = start;
    let mut seg = start;
    loop {
        let q = memchr::memchr(b'"', &bytes[i..]).ok_or(Malformed)? + i;
        if bytes.get(q + 1) == Some(&b'"') {
            owned
                .get_or_insert_with(String::new)
                .push_str(&line[seg..=q]);
            i = q + 2;
            seg = i;
            continue;
        }
        let field = match owned {
            None => Cow::Borrowed(&line[start..q]),
            Some(mut v) => {
                v.push_str(&line[seg..q]);
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
        split_fields(line, &mut out)?;
        Ok(out.iter().map(|f| f.to_string()).collect())
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
