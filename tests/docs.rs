//! The docs cannot drift from the code silently: every long flag of every command's
//! `--help` is in docs/operating.md and every `--flag` the docs name exists; every
//! `storepulse_` metric the docs name is defined in src/metrics/mod.rs; every file the code
//! map of ARCHITECTURE.md names exists, and it names every bench and test helper; every
//! relative link of the docs points at a file. Std only.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The commands `storepulse --help` lists (the hidden `serve-worker` is internal).
const COMMANDS: [&str; 6] = ["run", "replay", "process", "query", "serve", "generate"];

/// Long flags of other tools in the docs' command lines: cargo's (`run --release`, `test
/// --workspace`, `test --test nemesis -- --ignored --nocapture`, `bench --bench kafka`),
/// `docker compose run --rm`, and the tansu broker's as tests/common/kafka.rs starts it.
/// Anything else the docs write as `--name` must be a flag of some storepulse command.
const OTHER_TOOLS: &str = "release workspace test bench no-run ignored nocapture rm \
    storage-engine listener-url advertised-listener-url separate";

/// Code-map paths that start with one of these are read from the project's root; other
/// `*.rs` and `*/` names beside their row's own path.
const TOP_DIRS: &str = "src/ replay/ aggregate/ tests/ benches/ deploy/ schemas/ data/ docs/ .ci/";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The names of the files in the folder `dir` (from the root) that end with `ending`.
fn files(dir: &str, ending: &str) -> Vec<String> {
    let entries = std::fs::read_dir(root().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let names = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned());
    let mut names: Vec<String> = names.filter(|n| n.ends_with(ending)).collect();
    names.sort();
    names
}

/// The pages the docs are made of: README.md, docs/*.md and ARCHITECTURE.md.
fn pages() -> Vec<String> {
    let docs = files("docs", ".md")
        .into_iter()
        .map(|n| format!("docs/{n}"));
    let mut pages: Vec<String> = docs.collect();
    pages.extend(["README.md".to_string(), "ARCHITECTURE.md".to_string()]);
    pages
}

/// The `--name` words of `text`, in order: `--` after neither a word character nor `-`,
/// a lowercase letter, then letters, digits and `-` (a trailing `-` dropped).
fn long_flags(text: &str) -> Vec<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let mut found = Vec::new();
    for (at, _) in text.match_indices("--") {
        let rest = &text[at + 2..];
        let end = rest.find(|c: char| !name(c)).unwrap_or(rest.len());
        let flag = rest[..end].trim_end_matches('-');
        if !text[..at].ends_with(word) && flag.starts_with(|c: char| c.is_ascii_lowercase()) {
            found.push(flag.to_string());
        }
    }
    found
}

/// What `storepulse <args> --help` prints.
fn help(args: &[&str]) -> String {
    let mut storepulse = Command::new(env!("CARGO_BIN_EXE_storepulse"));
    let out = storepulse
        .args(args)
        .arg("--help")
        .output()
        .expect("run storepulse");
    assert!(out.status.success(), "storepulse {args:?} --help failed");
    String::from_utf8(out.stdout).expect("--help is UTF-8")
}

/// The long flags a `--help` lists: the first `--name` of each line that starts (after its
/// indentation) with `-`, such as `  -h, --help` or `      --input <INPUT>`.
fn help_flags(args: &[&str]) -> BTreeSet<String> {
    let text = help(args);
    let lines = text.lines().filter(|l| l.trim_start().starts_with('-'));
    lines
        .filter_map(|l| long_flags(l).into_iter().next())
        .collect()
}

/// The text between backquotes in `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn every_flag_is_documented_and_every_documented_flag_exists() {
    let top = help(&[]);
    let listed: BTreeSet<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    let expected: BTreeSet<&str> = COMMANDS.into_iter().collect();
    assert_eq!(listed, expected, "the commands changed: update COMMANDS");

    let documented: BTreeSet<String> = long_flags(&read("docs/operating.md")).into_iter().collect();
    let mut known = help_flags(&[]);
    for cmd in COMMANDS {
        let flags = help_flags(&[cmd]);
        let read_well = flags.contains("help") && flags.len() >= 4;
        assert!(read_well, "`{cmd} --help` was misread: {flags:?}");
        for flag in flags {
            let missing = format!("`storepulse {cmd} --{flag}` is not in docs/operating.md");
            assert!(documented.contains(&flag), "{missing}");
            known.insert(flag);
        }
    }
    let others: BTreeSet<&str> = OTHER_TOOLS.split_whitespace().collect();
    for page in pages() {
        for flag in long_flags(&read(&page)) {
            let exists = known.contains(&flag) || others.contains(flag.as_str());
            let unknown = format!(
                "{page} names `--{flag}`, which no storepulse command has \
                 (another tool's? then add it to OTHER_TOOLS)"
            );
            assert!(exists, "{unknown}");
        }
    }
}

/// The `storepulse_<name>` words of `text`, without the prefix; crate paths such as
/// `storepulse_replay::wire` are left out. A name ending in `_` is a family
/// (`storepulse_resumed_*`).
fn metric_names(text: &str) -> Vec<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut found = Vec::new();
    for (at, prefix) in text.match_indices("storepulse_") {
        let rest = &text[at + prefix.len()..];
        let end = rest.find(|c: char| !name(c)).unwrap_or(rest.len());
        if !text[..at].ends_with(word) && end > 0 && !rest[end..].starts_with("::") {
            found.push(rest[..end].to_string());
        }
    }
    found
}

#[test]
fn every_metric_the_docs_name_is_defined() {
    let source = read("src/metrics/mod.rs");
    // The names are string literals there, without the prefix the registry adds. The
    // literals are found by splitting on quotes (so the file must hold no escaped quote);
    // every literal counts, help texts and label values included: a doc name matching
    // only one of those would pass, a name defined nowhere would not.
    let prefixed = source.contains(r#"Registry::new_custom(Some("storepulse".into())"#);
    assert!(
        prefixed,
        "the registry's prefix moved: read src/metrics/mod.rs"
    );
    assert!(
        !source.contains("\\\""),
        "an escaped quote in src/metrics/mod.rs"
    );
    let literals: BTreeSet<&str> = source.split('"').skip(1).step_by(2).collect();
    // A histogram also exports `<name>_bucket`, `_sum` and `_count`.
    let histograms: BTreeSet<&str> = source
        .split("HistogramOpts::new(")
        .skip(1)
        .filter_map(|rest| rest.split('"').nth(1))
        .collect();
    assert!(!histograms.is_empty(), "no histogram in src/metrics/mod.rs");
    let mut named = 0;
    for page in pages() {
        for name in metric_names(&read(&page)) {
            named += 1;
            let histogram = |s: &str| name.strip_suffix(s).is_some_and(|h| histograms.contains(h));
            let defined = if name.ends_with('_') {
                literals.iter().any(|l| l.starts_with(name.as_str()))
            } else {
                let parts = ["_bucket", "_sum", "_count"];
                literals.contains(name.as_str()) || parts.into_iter().any(histogram)
            };
            let missing = format!("{page} names `storepulse_{name}`, not in src/metrics/mod.rs");
            assert!(defined, "{missing}");
        }
    }
    assert!(named > 20, "only {named} metric names found in the docs");
}

#[test]
fn every_file_the_code_map_names_exists() {
    let architecture = read("ARCHITECTURE.md");
    let map = architecture.split("\n## Code map\n").nth(1);
    let map = map.expect("a `## Code map` section in ARCHITECTURE.md");
    let map = map.split("\n## ").next().unwrap_or(map);
    let top: Vec<&str> = TOP_DIRS.split_whitespace().collect();
    let mut rows = 0;
    for row in map.lines().filter(|l| l.starts_with("| `")) {
        rows += 1;
        let cells: Vec<&str> = row.split('|').collect();
        // The first cell holds the row's own paths, from the root.
        let own = code_spans(cells[1]);
        for path in &own {
            let exists = root().join(path).exists();
            assert!(exists, "the code map names `{path}`, which does not exist");
        }
        let first = own[0];
        let base = match first.rfind('/') {
            Some(i) => &first[..=i],
            None => "",
        };
        // Files the other cells name: from the root, or beside the row's own path.
        for span in cells[2..].iter().copied().flat_map(code_spans) {
            if span.contains(|c: char| " <>:*[]".contains(c)) {
                continue;
            }
            let path = if top.iter().any(|d| span.starts_with(*d)) {
                span.to_string()
            } else if span.ends_with(".rs") || span.ends_with('/') {
                format!("{base}{span}")
            } else {
                continue;
            };
            let exists = root().join(&path).exists();
            assert!(exists, "code map row `{first}` names `{span}`: no {path}");
        }
    }
    assert!(rows > 40, "only {rows} rows read from the code map");
    for dir in ["benches", "tests/common"] {
        for name in files(dir, ".rs") {
            let listed = map.contains(&format!("`{dir}/{name}`"));
            assert!(listed, "{dir}/{name} is missing from the code map");
        }
    }
}

#[test]
fn every_relative_link_points_at_a_file() {
    let mut links = 0;
    for page in pages() {
        let text = read(&page);
        let path = root().join(&page);
        let dir = path.parent().expect("a page is in a folder");
        for (at, _) in text.match_indices("](") {
            let rest = &text[at + 2..];
            let target = &rest[..rest.find(')').unwrap_or(rest.len())];
            let external = ["http://", "https://", "mailto:", "#"];
            if external.into_iter().any(|p| target.starts_with(p)) {
                continue;
            }
            links += 1;
            let file = target.split('#').next().unwrap_or(target);
            let exists = dir.join(file).exists();
            assert!(exists, "{page} links to `{target}`, which does not exist");
        }
    }
    assert!(links > 10, "only {links} relative links found");
}
