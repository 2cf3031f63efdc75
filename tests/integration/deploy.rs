//! The deployment examples under `deploy/` parse, and say only true
//! things about outboxd: the settings their containers pass are outboxd's
//! own and pass its validation, probes hit the real paths on the real
//! port, files they mount exist, the application and outboxd log in as
//! different roles, and every metric the Grafana dashboard queries is
//! exported, with the labels it uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory as _;
use outboxd::cli::{Cli, Command};
use outboxd::config::Config;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn yaml_to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => Value::from(text.parse::<f64>().unwrap()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => panic!("unsupported YAML key {other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::BadValue => panic!("unsupported YAML value {yaml:?}"),
    }
}

/// Every document of a YAML file, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .map(yaml_to_json)
        .collect()
}

fn deploy_file(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other}"),
    }
}

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let mut files = Vec::new();
    files_under(&repo().join("deploy"), &mut files);
    let mut parsed = 0;
    for file in &files {
        match file.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                assert!(!yaml_documents(file).is_empty(), "{}", file.display());
                parsed += 1;
            }
            Some("json") => {
                serde_json::from_str::<Value>(&read(file))
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                parsed += 1;
            }
            _ => {}
        }
    }
    assert!(parsed >= 6, "only {parsed} files parsed");
}

/// Every environment variable outboxd reads through clap, with the long
/// flag it stands for and whether that flag takes a value.
fn outboxd_env() -> BTreeMap<String, (String, bool)> {
    fn walk(command: &clap::Command, out: &mut BTreeMap<String, (String, bool)>) {
        for arg in command.get_arguments() {
            if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
                let takes_value = arg.get_action().takes_values();
                out.insert(
                    env.to_string_lossy().into_owned(),
                    (format!("--{long}"), takes_value),
                );
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(&Cli::command(), &mut out);
    out
}

/// `outboxd ARGS` with `env` applied as the flags they stand for, parsed
/// and validated as `outboxd run` would.
fn run_config(args: &[String], env: &BTreeMap<String, String>) -> Config {
    let known = outboxd_env();
    let mut argv = vec!["outboxd".to_owned()];
    argv.extend(args.iter().cloned());
    for (name, value) in env {
        if name == "RUST_LOG" {
            continue;
        }
        let Some((flag, takes_value)) = known.get(name) else {
            panic!("{name} is not an outboxd environment variable");
        };
        if *takes_value {
            argv.push(format!("{flag}={value}"));
        } else if value == "true" {
            argv.push(flag.clone());
        }
    }
    let cli = <Cli as clap::Parser>::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("outboxd does not accept {argv:?}: {e}"));
    let Command::Run(run) = cli.command else {
        panic!("{argv:?} is not `outboxd run`");
    };
    run.config()
        .unwrap_or_else(|e| panic!("{argv:?} is refused: {e:#}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, got {value}"))
        .iter()
        .map(text)
        .collect()
}

/// The image's `HEALTHCHECK CMD`, from the Dockerfile.
fn image_healthcheck() -> Vec<String> {
    let dockerfile = read(&repo().join("Dockerfile"));
    let after = dockerfile.split("HEALTHCHECK").nth(1).unwrap();
    let cmd = after.split("CMD ").nth(1).unwrap().lines().next().unwrap();
    serde_json::from_str(cmd).unwrap()
}

/// The (Secret, key) a `valueFrom` reads, `(Null, Null)` for none.
fn secret_ref(value_from: &Value) -> (Value, Value) {
    let reference = &value_from["secretKeyRef"];
    (reference["name"].clone(), reference["key"].clone())
}

#[test]
fn kubernetes_sidecar_probes_and_configures_outboxd_correctly() {
    let docs = yaml_documents(&deploy_file("kubernetes/outboxd-sidecar.yaml"));
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"];
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["runAsUser"], 65532,
        "the image's user"
    );
    let containers = spec["containers"].as_array().unwrap();
    assert!(containers.len() >= 2, "the application and its sidecar");
    let outboxd = containers
        .iter()
        .find(|c| c["name"] == "outboxd")
        .expect("an outboxd container");

    let mut env = BTreeMap::new();
    for var in outboxd["env"].as_array().unwrap() {
        let name = text(&var["name"]);
        let value = match (&var["value"], &var["valueFrom"]) {
            (Value::Null, Value::Null) => panic!("{name} has no value"),
            (Value::Null, from) if from.get("secretKeyRef").is_some() => {
                "postgres://outboxd@db.internal/shop".to_owned()
            }
            (Value::Null, from) if from.get("fieldRef").is_some() => "shop-6d4cf-x2x9z".to_owned(),
            (value, _) => text(value),
        };
        env.insert(name, value);
    }
    let from_secret = outboxd["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "DATABASE_URL")
        .expect("DATABASE_URL is set");
    assert!(
        from_secret["valueFrom"]["secretKeyRef"]["name"].is_string(),
        "DATABASE_URL comes from a Secret"
    );
    let sidecar_login = secret_ref(&from_secret["valueFrom"]);
    let console = outboxd["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "OUTBOXD_CONSOLE_TOKEN")
        .expect("the console can be turned on");
    assert_eq!(
        console["valueFrom"]["secretKeyRef"]["optional"], true,
        "without its Secret the console is off and the pod still starts"
    );
    assert_ne!(secret_ref(&console["valueFrom"]), sidecar_login);
    for container in containers.iter().filter(|c| c["name"] != "outboxd") {
        let name = text(&container["name"]);
        for var in container["env"].as_array().into_iter().flatten() {
            assert_ne!(
                secret_ref(&var["valueFrom"]),
                sidecar_login,
                "{name} reads outboxd's database login into {}: the application logs in as an outbox_writer member, outboxd as an outbox_sidecar member (docs/security.md)",
                var["name"]
            );
        }
        for from in container["envFrom"].as_array().into_iter().flatten() {
            assert_ne!(
                from["secretRef"]["name"], sidecar_login.0,
                "{name} imports the Secret of outboxd's database login"
            );
        }
    }
    let config = run_config(&strings(&outboxd["args"]), &env);
    let admin = config.admin_addr.expect("the admin server runs");
    assert!(
        admin.ip().is_unspecified(),
        "probes come from outside: {admin}"
    );
    assert_eq!(annotations["prometheus.io/port"], admin.port().to_string());
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        Duration::from_secs(grace) > config.shutdown_grace,
        "Kubernetes must wait longer than outboxd's shutdown grace"
    );

    let port_named = |name: &Value| {
        outboxd["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| &p["name"] == name || &p["containerPort"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &outboxd[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            port_named(&get["port"]),
            u64::from(admin.port()),
            "{probe} port"
        );
    }
}

#[test]
fn compose_wires_postgres_outboxd_and_the_example_receiver() {
    let compose = yaml_documents(&deploy_file("docker-compose.yml")).remove(0);
    let services = compose["services"].as_object().unwrap();
    let dockerfile = read(&repo().join("Dockerfile"));
    for (name, service) in services {
        if let Some(build) = service.get("build") {
            assert_eq!(build["context"], "..", "{name} builds the repository");
            if let Some(target) = build.get("target") {
                assert!(
                    dockerfile.contains(&format!(" AS {}\n", text(target))),
                    "{name}: no Dockerfile stage {target}"
                );
            }
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = text(volume).split(':').next().unwrap().to_owned();
            assert!(
                repo().join("deploy").join(&source).exists(),
                "{name} mounts {source}, which does not exist"
            );
        }
    }

    let outboxd = &services["outboxd"];
    let env: BTreeMap<String, String> = outboxd["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), text(v)))
        .collect();
    let config = run_config(&strings(&outboxd["command"]), &env);
    let db_host = env["DATABASE_URL"]
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap();
    assert!(
        services.contains_key(db_host),
        "DATABASE_URL names a service"
    );
    compose_logins_are_separate(services, &env["DATABASE_URL"]);
    assert_eq!(config.admin_addr.unwrap().port(), 9090);
    let mut healthcheck = strings(&outboxd["healthcheck"]["test"]);
    assert_eq!(healthcheck.remove(0), "CMD");
    assert_eq!(healthcheck, image_healthcheck());
    // The postgres image's init scripts run on a server that listens on its
    // Unix socket only: healthy must mean reachable over TCP, or `migrate`
    // starts against a server about to shut down.
    let pg_isready = strings(&services["postgres"]["healthcheck"]["test"]);
    assert!(
        pg_isready.windows(2).any(|w| w == ["-h", "127.0.0.1"]),
        "{pg_isready:?}"
    );
    let networks = compose["networks"]["outbox"]["ipam"]["config"][0]["subnet"].clone();
    assert_eq!(
        env["OUTBOXD_ALLOW_NETWORKS"],
        text(&networks),
        "outboxd may reach exactly the compose network"
    );

    // The setup job registers the receiver's URL with the receiver's secret.
    let receiver = &services["receiver"];
    let setup = strings(&services["setup"]["command"]);
    let var = |name: &str| {
        setup
            .iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("setup sets no {name}"))
            .to_owned()
    };
    let listen_port = text(&receiver["environment"]["LISTEN_ADDR"])
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(var("url"), format!("http://receiver:{listen_port}/webhook"));
    let secret = text(&receiver["environment"]["WEBHOOK_SECRET"]);
    assert_eq!(var("secret"), secret);
    let default = secret
        .strip_prefix("${WEBHOOK_SECRET:-")
        .and_then(|s| s.strip_suffix('}'))
        .expect("a default for WEBHOOK_SECRET");
    outboxd::signature::Secret::parse(default).expect("a valid default secret");
    for file in setup.iter().filter(|a| a.starts_with("/examples/sql/")) {
        let local = repo().join(file.trim_start_matches('/'));
        assert!(local.is_file(), "setup runs {file}, which does not exist");
    }

    let prometheus = yaml_documents(&deploy_file("prometheus/prometheus.yml")).remove(0);
    let targets = strings(&prometheus["scrape_configs"][0]["static_configs"][0]["targets"]);
    assert_eq!(targets, ["outboxd:9090"]);
}

/// The user of a `postgres://user:password@host/db` URL.
fn login_of(url: &str) -> String {
    let rest = url.split_once("://").expect("a URL").1;
    let userinfo = rest.split_once('@').expect("a user in the URL").0;
    userinfo.split(':').next().unwrap().to_owned()
}

/// outboxd logs in as a member of outbox_sidecar, not as the database
/// owner (a superuser in the postgres image), and not as the application's
/// outbox_writer login; the schema is migrated, before outboxd starts, by a
/// one-shot service that logs in as the owner.
fn compose_logins_are_separate(services: &serde_json::Map<String, Value>, outboxd_url: &str) {
    let postgres = &services["postgres"];
    let owner = text(&postgres["environment"]["POSTGRES_USER"]);
    let sidecar = login_of(outboxd_url);
    assert_ne!(sidecar, owner, "outboxd must not log in as the owner");

    let mut init_sql = String::new();
    for volume in postgres["volumes"].as_array().into_iter().flatten() {
        let volume = text(volume);
        let mut parts = volume.split(':');
        let (source, target) = (parts.next().unwrap(), parts.next().unwrap());
        if target.starts_with("/docker-entrypoint-initdb.d/") {
            init_sql.push_str(&read(&repo().join("deploy").join(source)));
        }
    }
    let login_in = |group: &str| {
        init_sql
            .lines()
            .filter(|l| l.starts_with("CREATE ROLE ") && l.contains(" LOGIN "))
            .filter(|l| {
                l.trim_end_matches(';')
                    .ends_with(&format!(" IN ROLE {group}"))
            })
            .map(|l| {
                l["CREATE ROLE ".len()..]
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        login_in("outbox_sidecar"),
        std::slice::from_ref(&sidecar),
        "an init script makes outboxd's login a member of outbox_sidecar"
    );
    let writers = login_in("outbox_writer");
    assert!(
        !writers.is_empty() && !writers.contains(&sidecar),
        "the application has a login of its own in outbox_writer: {writers:?}"
    );

    let migrate = services
        .iter()
        .find(|(_, service)| service["command"] == serde_json::json!(["migrate"]))
        .expect("a service runs `outboxd migrate`");
    assert_eq!(
        login_of(&text(&migrate.1["environment"]["DATABASE_URL"])),
        owner,
        "migrations run as the owner"
    );
    assert_eq!(
        services["outboxd"]["depends_on"][migrate.0]["condition"], "service_completed_successfully",
        "outboxd starts once the schema is migrated"
    );
}

/// Metric name -> (labels, is a histogram), read from src/telemetry.rs.
fn exported_metrics() -> BTreeMap<String, (BTreeSet<String>, bool)> {
    let source = read(&repo().join("src/telemetry.rs"));
    let mut consts = BTreeMap::new();
    for line in source.lines() {
        if let Some(rest) = line.trim().strip_prefix("pub const ")
            && let Some((name, value)) = rest.split_once(": &str = \"")
        {
            consts.insert(name.to_owned(), value.trim_end_matches("\";").to_owned());
        }
    }
    let mut metrics = BTreeMap::new();
    for (constant, metric) in &consts {
        let mut labels = BTreeSet::new();
        let mut histogram = false;
        // Every macro call naming the constant: `kind!(CONST, "label" => ...)`.
        for (at, _) in source.match_indices(&format!("!({constant}")) {
            let kind_start = source[..at].rfind(|c: char| !c.is_alphanumeric() && c != '_');
            let kind = &source[kind_start.map_or(0, |i| i + 1)..at];
            histogram |= kind.contains("histogram");
            let call = &source[at + 2..];
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(call.len(), |(i, _)| i);
            let mut args = &call[..end];
            while let Some(open) = args.find('"') {
                let Some(close) = args[open + 1..].find('"') else {
                    break;
                };
                let label = &args[open + 1..open + 1 + close];
                args = &args[open + close + 2..];
                if args.trim_start().starts_with("=>") {
                    labels.insert(label.to_owned());
                }
            }
        }
        metrics.insert(metric.clone(), (labels, histogram));
    }
    assert!(metrics.len() >= 10, "read {metrics:?}");
    metrics
}

/// The `outboxd_*` series an expression selects, each with the labels of
/// its `{...}` selector.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("outboxd_") {
        let name_len = rest[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - at);
        let name = rest[at..at + name_len].to_owned();
        rest = &rest[at + name_len..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').unwrap();
            for matcher in inner[..end].split(',') {
                let label = matcher.split(['=', '!', '~']).next().unwrap().trim();
                labels.push(label.to_owned());
            }
        }
        found.push((name, labels));
    }
    found
}

/// Labels after `by (` in an expression.
fn grouping_labels(expr: &str) -> Vec<String> {
    expr.split("by (")
        .skip(1)
        .flat_map(|rest| {
            rest.split(')')
                .next()
                .unwrap()
                .split(',')
                .map(|l| l.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn dashboard_queries_only_exported_metrics_and_labels() {
    let exported = exported_metrics();
    let dashboard: Value =
        serde_json::from_str(&read(&deploy_file("grafana/outboxd-dashboard.json"))).unwrap();
    assert_eq!(dashboard["uid"], "outboxd");
    let variables: BTreeSet<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| text(&v["name"]))
        .collect();
    assert!(variables.contains("datasource") && variables.contains("endpoint"));
    // Labels every scraped series has, and the histogram bucket bound.
    let scrape_labels = ["instance", "job", "le"];

    let mut queried = BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = text(&panel["title"]);
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = text(&target["expr"]);
            let mut labels_here = BTreeSet::new();
            for (series, labels) in selectors(&expr) {
                let (metric, suffix_ok) = match series.rsplit_once('_') {
                    Some((base, "bucket" | "sum" | "count"))
                        if exported.get(base).is_some_and(|(_, h)| *h) =>
                    {
                        (base.to_owned(), true)
                    }
                    _ => (
                        series.clone(),
                        !exported.get(&series).is_some_and(|(_, h)| *h),
                    ),
                };
                let Some((known_labels, _)) = exported.get(&metric) else {
                    panic!("{title}: {series} is not exported by src/telemetry.rs");
                };
                assert!(
                    suffix_ok,
                    "{title}: histogram {metric} needs _bucket/_sum/_count"
                );
                for label in &labels {
                    assert!(
                        known_labels.contains(label),
                        "{title}: {metric} has no label {label}"
                    );
                }
                labels_here.extend(known_labels.iter().cloned());
                queried.insert(metric);
            }
            for label in grouping_labels(&expr) {
                assert!(
                    labels_here.contains(&label) || scrape_labels.contains(&label.as_str()),
                    "{title}: grouping by {label}, which {expr} does not have"
                );
            }
            for variable in expr.split('$').skip(1) {
                let name: String = variable
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    name.starts_with("__") || variables.contains(&name),
                    "{title}: ${name} is not a dashboard variable"
                );
            }
        }
    }
    let missing: Vec<&String> = exported.keys().filter(|m| !queried.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "deploy/grafana/outboxd-dashboard.json shows no panel for {missing:?}: add one"
    );
}

/// `promtool` (Debian's prometheus package, installed by
/// `.ci/install-prometheus`) checks deploy/prometheus/alerts.yml with
/// Prometheus's own parser and runs its unit tests (alerts.test.yml: each
/// alert fires on the series that should raise it, and only on them).
/// Every outboxd metric an alert reads is one src/telemetry.rs exports.
#[test]
fn alert_rules_parse_fire_as_tested_and_read_exported_metrics() {
    let exported = exported_metrics();
    let rules = yaml_documents(&deploy_file("prometheus/alerts.yml")).remove(0);
    let mut alerts = BTreeSet::new();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let name = text(&rule["alert"]);
        for (series, labels) in selectors(&text(&rule["expr"])) {
            let Some((known, _)) = exported.get(&series) else {
                panic!("{name}: {series} is not exported by src/telemetry.rs");
            };
            for label in labels {
                assert!(
                    known.contains(&label),
                    "{name}: {series} has no label {label}"
                );
            }
        }
        alerts.insert(name);
    }
    for wanted in [
        "OutboxdDeadDeliveriesRising",
        "OutboxdEndpointDisabled",
        "OutboxdBacklogOld",
        "OutboxdNotReady",
    ] {
        assert!(alerts.contains(wanted), "{wanted} missing from {alerts:?}");
    }
    let prometheus = yaml_documents(&deploy_file("prometheus/prometheus.yml")).remove(0);
    assert_eq!(strings(&prometheus["rule_files"]), ["alerts.yml"]);

    let Ok(version) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        eprintln!(
            "SKIPPED alert_rules_parse_fire_as_tested_and_read_exported_metrics: promtool not \
             found (bash .ci/install-prometheus installs Debian's prometheus package)"
        );
        return;
    };
    assert!(version.status.success());
    let dir = deploy_file("prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let output = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The Dockerfile's instructions, continuation lines joined, comments out.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read(&repo().join("Dockerfile")).lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((keyword.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// `key="value"` pairs of a LABEL instruction.
fn labels(args: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = args.trim();
    while let Some((key, after)) = rest.split_once("=\"") {
        let (value, tail) = after.split_once('"').expect("a closing quote");
        out.insert(key.trim().to_owned(), value.to_owned());
        rest = tail.trim();
    }
    out
}

#[test]
fn dockerfile_pins_its_base_images_and_labels_its_images() {
    let instructions = dockerfile_instructions();
    let args: BTreeMap<String, String> = instructions
        .iter()
        .filter(|(k, _)| k == "ARG")
        .filter_map(|(_, a)| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let mut stages: Vec<String> = Vec::new();
    // (image, labels, has an ENTRYPOINT) per stage.
    let mut images: Vec<(String, BTreeMap<String, String>, bool)> = Vec::new();
    for (keyword, rest) in &instructions {
        match keyword.as_str() {
            "FROM" => {
                let mut words = rest.split_whitespace();
                let mut image = words.next().unwrap().to_owned();
                for (name, value) in &args {
                    image = image.replace(&format!("${{{name}}}"), value);
                }
                if let (Some("AS"), Some(name)) = (words.next(), words.next()) {
                    stages.push(name.to_owned());
                }
                images.push((image, BTreeMap::new(), false));
            }
            "LABEL" => images.last_mut().unwrap().1.extend(labels(rest)),
            "ENTRYPOINT" => images.last_mut().unwrap().2 = true,
            _ => {}
        }
    }
    for (image, _, _) in &images {
        if stages.contains(image) {
            continue; // a stage of this file
        }
        let digest = image.split_once("@sha256:").map(|(_, d)| d);
        let tag = image
            .split('@')
            .next()
            .unwrap()
            .rsplit_once(':')
            .map(|(_, t)| t);
        let exact_tag = tag.is_some_and(|t| {
            let version = t.split('-').next().unwrap();
            version.split('.').count() == 3 && version.split('.').all(|n| n.parse::<u32>().is_ok())
        });
        let pinned =
            digest.is_some_and(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(
            exact_tag || pinned,
            "{image}: pin a base image by an exact version tag or a digest"
        );
    }
    let shipped: Vec<_> = images.iter().filter(|(_, _, entry)| *entry).collect();
    assert_eq!(shipped.len(), 2, "outboxd and the example receiver");
    for (image, labels, _) in shipped {
        for key in [
            "title",
            "description",
            "version",
            "licenses",
            "base.name",
            "base.digest",
        ] {
            let key = format!("org.opencontainers.image.{key}");
            assert!(labels.contains_key(&key), "{image}: no {key} label");
        }
        assert_eq!(
            labels["org.opencontainers.image.version"],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            labels["org.opencontainers.image.licenses"],
            env!("CARGO_PKG_LICENSE")
        );
        let (name, digest) = image.split_once('@').unwrap();
        assert_eq!(labels["org.opencontainers.image.base.name"], name);
        assert_eq!(labels["org.opencontainers.image.base.digest"], digest);
    }
    let outboxd = &images.last().unwrap().1;
    assert_eq!(outboxd["org.opencontainers.image.title"], "outboxd");
    assert_eq!(
        outboxd["org.opencontainers.image.description"],
        env!("CARGO_PKG_DESCRIPTION")
    );
}
