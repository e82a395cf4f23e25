//! What the page may tell a client about a failure: what failed, never where this machine
//! keeps things. No absolute path (a path inside the snapshot folder becomes relative to
//! it, another its last part), no store endpoint or bucket layout (a URL or an object key
//! becomes its last part), no body the store answered with (S3's XML). The whole error goes
//! to the server's log instead.

use std::path::Path;

use crate::snapshot::SnapshotError;

/// `text` without the absolute paths of `dir` (as given, absolute and canonical) and of any
/// other absolute path, without URLs, object keys and XML bodies.
pub fn scrub(text: &str, dir: &Path) -> String {
    let mut prefixes: Vec<String> = Vec::new();
    if let Ok(c) = dir.canonicalize() {
        prefixes.push(c.display().to_string());
    }
    if let Ok(cwd) = std::env::current_dir() {
        prefixes.push(cwd.join(dir).display().to_string());
    }
    prefixes.push(dir.display().to_string());
    // DataFusion names local files by their object store path: without the leading `/`.
    let relative: Vec<String> = prefixes
        .iter()
        .filter_map(|p| p.strip_prefix('/').map(String::from))
        .collect();
    prefixes.extend(relative);
    prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let mut out = without_xml(&text.replace("file://", ""));
    for p in prefixes.iter().filter(|p| !p.is_empty() && *p != ".") {
        out = out.replace(&format!("{p}/"), "").replace(p.as_str(), ".");
    }
    tokens(&out, |previous, token| {
        if let Some((_, rest)) = token.split_once("://") {
            // A URL: neither its endpoint nor its bucket and prefix.
            return Some(match rest.split_once('/') {
                Some((_, path)) => last_part(path).unwrap_or("the store").to_string(),
                None => "the store".into(),
            });
        }
        // `Object at location <key> not found`: the key's last part.
        let key = previous == "location" && token.contains('/');
        // An absolute path, alone or after punctuation (`at=/x/y`, `public./x/y`); not a
        // relative one (`snap-3/rfm.parquet`).
        let path = token.find('/').filter(|&i| {
            let after_word = token[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || "-_".contains(c));
            !after_word && token[i + 1..].contains('/')
        });
        match (key, path) {
            (true, _) => last_part(token).map(String::from),
            (_, Some(i)) => last_part(&token[i..]).map(|l| format!("{}{l}", &token[..i])),
            _ => None,
        }
    })
}

/// [`scrub`] for an `EXPLAIN` plan: also every file named by a relative path (a bucket's
/// object keys, which the plan gives without their URL) becomes its last part.
pub fn scrub_plan(text: &str, dir: &Path) -> String {
    tokens(&scrub(text, dir), |_, token| {
        let file = [".parquet", ".json", ".arrow"]
            .iter()
            .any(|e| token.trim_end_matches([':', ',', ';']).ends_with(e));
        (file && token.contains('/'))
            .then(|| last_part(token).map(String::from))
            .flatten()
    })
}

/// What a snapshot that could not be read tells a client: for a store error, what was
/// being read and how the store answered in a few words; logged whole.
pub fn snapshot_error(e: &SnapshotError, dir: &Path) -> String {
    tracing::warn!(error = %e, "the snapshot could not be read");
    let SnapshotError::Store { what, url, source } = e else {
        return scrub(&e.to_string(), dir);
    };
    use object_store::Error as E;
    let answer = match source.as_ref() {
        E::NotFound { .. } => "not found",
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => "the store refused access",
        E::Precondition { .. } | E::NotModified { .. } => "changed meanwhile",
        _ => "the store failed to answer (the server's log has the details)",
    };
    let object = last_part(url).unwrap_or("the snapshot");
    format!("{what} {object}: {answer}")
}

/// The last part of a path, without a trailing `/`.
fn last_part(path: &str) -> Option<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|l| !l.is_empty())
}

/// `text` with a store's XML answer (`<?xml ...>` or `<Error>...`) left out.
fn without_xml(text: &str) -> String {
    let start = ["<?xml", "<Error>"]
        .iter()
        .filter_map(|m| text.find(m))
        .min();
    match (start, text.rfind('>')) {
        (Some(a), Some(b)) if b > a => format!(
            "{}(the store's answer is left out){}",
            &text[..a],
            &text[b + 1..]
        ),
        _ => text.to_string(),
    }
}

/// `text` with each token (between spaces, quotes and brackets) that `change` returns a
/// replacement for replaced; `change` also sees the token before it.
fn tokens(text: &str, mut change: impl FnMut(&str, &str) -> Option<String>) -> String {
    let delimiter = |c: char| c.is_whitespace() || "\"'`()[]{},=<>".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut previous = "";
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest.find(|c: char| !delimiter(c)).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(delimiter).unwrap_or(rest.len());
        let token = &rest[..end];
        match change(previous, token) {
            Some(new) => out.push_str(&new),
            None => out.push_str(token),
        }
        previous = token;
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_no_absolute_path() {
        let dir = Path::new("/srv/data/snaps");
        let said = scrub(
            "reading /srv/data/snaps/snap-3/manifest.json: gone; \
             Object Store error: file:///srv/data/snaps/snap-3/rfm.parquet not found; \
             spill to /tmp/.tmpAbC/spill-1.arrow failed (x / 2); at=/var/x/y.log; \
             table 'datafusion.public./home/x/data.csv' not found",
            dir,
        );
        assert_eq!(
            said,
            "reading snap-3/manifest.json: gone; Object Store error: snap-3/rfm.parquet not found; \
             spill to spill-1.arrow failed (x / 2); at=y.log; \
             table 'datafusion.public.data.csv' not found"
        );
    }

    #[test]
    fn store_errors_name_no_endpoint_layout_or_body() {
        let dir = Path::new("s3://shop-bucket/prod/snaps");
        let said = scrub(
            "Object Store error: Generic S3 error: Error performing GET \
             http://10.0.0.7:9000/shop-bucket/prod/snaps/snap-000003-w1/rfm.parquet in 1.2s, \
             after 3 retries - Server returned non-success status 500: <?xml version=\"1.0\" \
             encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Resource>/shop-bucket/prod\
             </Resource></Error>; Object at location prod/snaps/snap-000003-w1/LATEST not found; \
             s3://shop-bucket/prod/snaps/merged",
            dir,
        );
        assert_eq!(
            said,
            "Object Store error: Generic S3 error: Error performing GET rfm.parquet in 1.2s, \
             after 3 retries - Server returned non-success status 500: (the store's answer is \
             left out); Object at location LATEST not found; merged"
        );
        for gone in ["10.0.0.7", "shop-bucket", "prod/", "<", "Resource"] {
            assert!(!said.contains(gone), "{gone} in {said}");
        }
        assert_eq!(
            scrub("GET http://10.0.0.7:9000 failed", dir),
            "GET the store failed"
        );
    }

    #[test]
    fn a_plan_names_files_without_their_folders() {
        let dir = Path::new("/srv/data/snaps");
        assert_eq!(
            scrub_plan(
                "DataSourceExec: file_groups={1 group: [[srv/data/snaps/snap-3/rfm.parquet]]}, \
                 projection=[a / b]; [[prod/snaps/snap-000003-w1/daily_sales.parquet]]",
                dir
            ),
            "DataSourceExec: file_groups={1 group: [[rfm.parquet]]}, projection=[a / b]; \
             [[daily_sales.parquet]]"
        );
    }
}
