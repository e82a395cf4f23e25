//! The docker-compose stack, checked as far as a machine without a Docker engine can:
//! the compose file parses, everything it mounts or builds from exists, the commands it
//! runs use flags the binary has and ports the scrape config expects, the Dockerfile
//! copies files that exist, and the Grafana provisioning fits the dashboard.
//! (`tests/observability.rs` runs the scrape config and the dashboard's queries against a
//! real Prometheus.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn project(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(project(path)).unwrap();
    let mut v: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    v.apply_merge().unwrap();
    v
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

#[test]
fn every_service_has_an_image_and_everything_mounted_or_built_exists() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    for want in [
        "kafka",
        "kafka-init",
        "process",
        "replay",
        "prometheus",
        "grafana",
        "query",
    ] {
        assert!(names.contains(want), "no service {want}");
    }
    let volumes: BTreeSet<&str> = c["volumes"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str())
        .collect();
    for (name, s) in services {
        let name = name.as_str().unwrap();
        let image = s["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no image"));
        assert!(
            image.contains(':') && !image.ends_with(":latest") || image == "storepulse:latest",
            "{name}: pin the image version ({image})"
        );
        if let Some(build) = s.get("build") {
            let context = project(build["context"].as_str().unwrap());
            assert!(context.is_dir(), "{name}: no build context");
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(
                context.join(dockerfile).is_file(),
                "{name}: no {dockerfile}"
            );
        }
        for mount in strings(&s["volumes"]) {
            let source = mount.split(':').next().unwrap();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(project(source).exists(), "{name} mounts missing {source}");
            } else {
                assert!(
                    volumes.contains(source),
                    "{name}: undeclared volume {source}"
                );
            }
        }
        for dep in s["depends_on"].as_mapping().into_iter().flatten() {
            let dep = dep.0.as_str().unwrap();
            assert!(names.contains(dep), "{name} depends on unknown {dep}");
        }
    }
}

#[test]
fn the_dockerfile_copies_files_that_exist_and_ships_a_stripped_binary() {
    let text = std::fs::read_to_string(project("Dockerfile")).unwrap();
    let mut copies = 0;
    for line in text.lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from=") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(project(source).exists(), "COPY of missing {source}");
            copies += 1;
        }
    }
    assert!(copies >= 5, "{copies} sources copied");
    assert!(text.contains("strip target/release/storepulse"));
    assert!(text.contains("FROM debian:bookworm-slim"));
    // Everything the build needs is copied: the workspace members, the sources, the
    // files they include and the declared benches.
    let manifest = std::fs::read_to_string(project("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .unwrap();
    let mut needed = vec!["src", "schemas", "benches"];
    needed.extend(members.split('"').skip(1).step_by(2).filter(|m| *m != "."));
    for dir in needed {
        assert!(
            text.contains(&format!("COPY {dir} {dir}")),
            "the image build needs {dir}"
        );
    }
    let ignore = std::fs::read_to_string(project(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target"));
}

/// The `--flags` of `storepulse <command> --help`.
fn flags(command: &str) -> BTreeSet<String> {
    let help = common::ok(&[command, "--help"]);
    help.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.trim_end_matches([',', '.'])
                .split(['=', '['])
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn compose_commands_use_flags_the_binary_has_and_ports_prometheus_scrapes() {
    let c = compose();
    let prometheus = std::fs::read_to_string(project("deploy/prometheus/prometheus.yml")).unwrap();
    for (service, port) in [("replay", 9465), ("process", 9466)] {
        let s = &c["services"][service];
        let command = strings(&s["command"]);
        assert_eq!(command[0], service);
        let known = flags(service);
        for flag in command.iter().filter(|a| a.starts_with("--")) {
            assert!(known.contains(flag), "{service}: unknown flag {flag}");
        }
        let env = &s["environment"];
        assert_eq!(
            env["STOREPULSE_METRICS_ADDR"].as_str(),
            Some(format!("0.0.0.0:{port}").as_str())
        );
        assert_eq!(env["STOREPULSE_BROKERS"].as_str(), Some("kafka:29092"));
        assert!(prometheus.contains(&format!("\"{service}:{port}\"")));
        // Prometheus names it by its service name, which its metrics must answer to.
        assert_eq!(env["STOREPULSE_METRICS_ALLOW_HOST"].as_str(), Some(service));
        assert!(known.contains("--metrics-allow-host"), "{service}");
        assert!(strings(&s["ports"]).contains(&format!(
            "${{METRICS_BIND_ADDRESS:-127.0.0.1}}:{port}:{port}"
        )));
        // The default --metrics-addr port is the one documented and scraped.
        let help = common::ok(&[service, "--help"]);
        assert!(help.contains(&format!("127.0.0.1:{port}")), "{help}");
    }
    let help = common::ok(&["run", "--help"]);
    assert!(help.contains("127.0.0.1:9464") && prometheus.contains("host.docker.internal:9464"));
    // The replayer reads a file the image has.
    let replay = strings(&c["services"]["replay"]["command"]);
    let input = &replay[replay.iter().position(|a| a == "--input").unwrap() + 1];
    let dockerfile = std::fs::read_to_string(project("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("COPY data/sample.csv {input}")),
        "{input}"
    );
    // The Kafka listener the services use is the internal one the broker advertises.
    let kafka = &c["services"]["kafka"]["environment"];
    assert!(kafka["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap()
        .contains("INTERNAL://kafka:29092"));
    assert!(kafka["KAFKA_PROCESS_ROLES"]
        .as_str()
        .unwrap()
        .contains("controller"));
}

/// The value compose gives `${NAME:-default}` / `${NAME:?error}` when `NAME` is unset:
/// `Ok(default)`, or `Err(message)` when compose refuses to start.
fn unset(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').unwrap() + i;
        let inner = &rest[i + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        } else if let Some((_, message)) = inner.split_once(":?") {
            return Err(message.to_string());
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[test]
fn compose_publishes_on_loopback_the_broker_and_metrics_apart_and_grafana_asks_for_a_login() {
    let c = compose();
    let mut published = BTreeSet::new();
    for (name, s) in c["services"].as_mapping().unwrap() {
        for port in strings(&s["ports"]) {
            let bound = unset(&port).unwrap();
            assert!(
                bound.starts_with("127.0.0.1:"),
                "{name:?} publishes {port} beyond this machine by default"
            );
            let number = port.rsplit(':').next().unwrap().to_string();
            // What has no authentication is exposed only by a variable of its own.
            let variable = match number.as_str() {
                "9092" => "BROKER_BIND_ADDRESS",
                "9090" | "9465" | "9466" => "METRICS_BIND_ADDRESS",
                _ => "BIND_ADDRESS",
            };
            assert!(
                port.starts_with(&format!("${{{variable}:-127.0.0.1}}:")),
                "{name:?}: {port} should follow {variable}"
            );
            published.insert(number);
        }
    }
    assert_eq!(
        published.into_iter().collect::<Vec<_>>(),
        ["3000", "8080", "9090", "9092", "9465", "9466"]
    );
    let anonymous = c["services"]["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"]
        .as_str()
        .unwrap();
    assert_eq!(unset(anonymous).as_deref(), Ok("false"), "{anonymous}");
    let grafana = &c["services"]["grafana"]["environment"];
    let password = grafana["GF_SECURITY_ADMIN_PASSWORD"].as_str().unwrap();
    assert!(
        unset(password).is_err(),
        "Grafana's admin password must come from the environment: {password}"
    );
    assert!(
        password.starts_with("${GRAFANA_ADMIN_PASSWORD:?"),
        "{password}"
    );
    let page = &c["services"]["process"];
    assert!(page["environment"]["STOREPULSE_ALLOW_HOST"]
        .as_str()
        .is_some());
    let readme = std::fs::read_to_string(project("docs/compose.md")).unwrap();
    for word in [
        "BIND_ADDRESS",
        "BROKER_BIND_ADDRESS",
        "METRICS_BIND_ADDRESS",
        "GRAFANA_ANONYMOUS=true",
        "GRAFANA_ADMIN_PASSWORD",
        "ALLOW_HOST",
        "--allow-host",
        "--metrics-allow-host",
    ] {
        assert!(
            readme.contains(word),
            "docs/compose.md does not say how to use {word}"
        );
    }
}

#[test]
fn the_compose_query_command_answers_on_a_real_snapshot() {
    let c = compose();
    let q = &c["services"]["query"];
    let entry = strings(&q["entrypoint"]);
    assert_eq!(entry[..3], ["storepulse", "query", "--snapshot-dir"]);
    let sql = strings(&q["command"]).remove(0);
    let tmp = tempfile::tempdir().unwrap();
    let snaps = tmp.path().join("snaps");
    common::run(&project("data/sample.csv"), &snaps, &[]);
    let out = common::ok(&["query", "--snapshot-dir", snaps.to_str().unwrap(), &sql]);
    for segment in ["Champion", "Lost Customers", "New Customers"] {
        assert!(out.contains(segment), "{out}");
    }
}

#[test]
fn grafana_is_provisioned_with_the_dashboard_and_its_datasource() {
    let c = compose();
    let g = &c["services"]["grafana"];
    let mounts = strings(&g["volumes"]);
    let target = |source: &str| {
        mounts
            .iter()
            .find_map(|m| m.strip_prefix(&format!("{source}:")))
            .map(|t| t.trim_end_matches(":ro").to_string())
            .unwrap_or_else(|| panic!("{source} not mounted"))
    };
    assert_eq!(
        target("./deploy/grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let dashboards = target("./deploy/grafana/dashboards");
    let env = &g["environment"];
    // A login by default; anonymous viewers only when asked for.
    assert_eq!(
        env["GF_AUTH_ANONYMOUS_ENABLED"].as_str(),
        Some("${GRAFANA_ANONYMOUS:-false}")
    );
    assert_eq!(env["GF_AUTH_ANONYMOUS_ORG_ROLE"].as_str(), Some("Viewer"));
    assert_eq!(
        env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].as_str(),
        Some(format!("{dashboards}/storepulse.json").as_str())
    );

    let provider = yaml("deploy/grafana/provisioning/dashboards/storepulse.yml");
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some(dashboards.as_str())
    );
    let sources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let source = &sources["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    assert_eq!(source["url"].as_str(), Some("http://prometheus:9090"));
    let uid = source["uid"].as_str().unwrap();

    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(project("deploy/grafana/dashboards/storepulse.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(d["uid"], "storepulse-pipeline");
    assert_eq!(d["refresh"], "5s");
    let panels = d["panels"].as_array().unwrap();
    let mut titles = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap();
        assert!(titles.insert(title), "two panels titled {title}");
        assert_eq!(p["datasource"]["uid"], uid, "{title}");
        assert!(!p["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap()
            .is_empty());
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], uid, "{title}");
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("storepulse_")
                    || expr.contains("up{")
                    || expr.contains("{job=~\"storepulse.*\"}"),
                "{title}"
            );
            // A fixed window is too short at a long scrape interval and too coarse at
            // a short one: rates follow Grafana's.
            for f in ["rate(", "deriv("] {
                for (i, _) in expr.match_indices(f) {
                    let window = expr[i..].split('[').nth(1).unwrap_or_default();
                    assert!(window.starts_with("$__rate_interval]"), "{title}: {expr}");
                }
            }
        }
        let pos = &p["gridPos"];
        assert!(
            pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap() <= 24,
            "{title}"
        );
    }
    // Every view the issue asks for has its panel.
    for want in [
        "Events per second",
        "Consumer lag",
        "Watermark and highest event time",
        "Rejected lines by reason",
        "Late, duplicate and dead-lettered messages",
        "Snapshot duration",
        "Since last snapshot",
        "Revenue per second",
        "Orders per second",
        "Customers per RFM segment",
        "Replay rate",
        "Replay speed",
    ] {
        assert!(titles.contains(want), "no panel {want}");
    }
}

/// The first query of the dashboard panel titled `title`, with Grafana's rate window as
/// `tests/observability.rs` evaluates it.
fn panel_expr(title: &str) -> String {
    common::prometheus::dashboard_exprs(&project("deploy/grafana/dashboards/storepulse.json"))
        .into_iter()
        .find(|(t, _)| t == title)
        .unwrap_or_else(|| panic!("no panel {title}"))
        .1
}

#[test]
fn since_last_snapshot_alarms_only_when_input_waits_and_segments_stay_per_process() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("rules.yml");
    let expr = panel_expr("Since last snapshot");
    std::fs::write(
        &rules,
        format!(
            "groups:\n  - name: panel\n    rules:\n      - record: since_last_snapshot\n        expr: '{}'\n",
            expr.replace('\'', "''")
        ),
    )
    .unwrap();
    // Twenty minutes of three pipelines: one idle with nothing to read (its last snapshot
    // long ago), one stalled with input waiting, one busy that snapshots as it goes.
    let tests = tmp.path().join("tests.yml");
    std::fs::write(
        &tests,
        r#"rule_files: [rules.yml]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'storepulse_snapshot_last_success_timestamp_seconds{job="idle"}'
        values: '60x80'
      - series: 'storepulse_events_applied_total{job="idle"}'
        values: '500x80'
      - series: 'storepulse_consumer_lag_messages{job="idle",partition="0"}'
        values: '0x80'
      - series: 'storepulse_snapshot_last_success_timestamp_seconds{job="stalled"}'
        values: '60x80'
      - series: 'storepulse_events_applied_total{job="stalled"}'
        values: '500x80'
      - series: 'storepulse_consumer_lag_messages{job="stalled",partition="0"}'
        values: '7x80'
      - series: 'storepulse_snapshot_last_success_timestamp_seconds{job="busy"}'
        values: '0+15x80'
      - series: 'storepulse_events_applied_total{job="busy"}'
        values: '0+100x80'
    promql_expr_test:
      - expr: since_last_snapshot
        eval_time: 20m
        exp_samples:
          - labels: 'since_last_snapshot{job="idle"}'
            value: 0
          - labels: 'since_last_snapshot{job="stalled"}'
            value: 1140
          - labels: 'since_last_snapshot{job="busy"}'
            value: 0
"#,
    )
    .unwrap();
    let (ok, said) = common::prometheus::promtool(&["test", "rules", tests.to_str().unwrap()], "");
    assert!(ok, "{expr}\n{said}");
    // One customer can be in several processors' partitions: never summed across them.
    let segments = panel_expr("Customers per RFM segment");
    assert!(
        segments.contains("by (job, instance, segment)"),
        "{segments}"
    );
}
