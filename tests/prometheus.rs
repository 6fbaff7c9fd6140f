//! The monitoring files under `deploy/` against the real tools: `promtool`
//! checks and unit-tests the alert rules, and a real `prometheus` scrapes a
//! real gateway that served a little traffic of every kind, then evaluates
//! every PromQL expression of `deploy/prometheus/alerts.yml` and
//! `deploy/grafana/gateway.json`. Each must parse and evaluate, and every
//! metric it names must be in the scrape: this is what fails when a metric
//! is renamed in the code and not in the dashboard or the alerts.
//!
//! `prometheus` and `promtool` come from the Debian package `prometheus`,
//! which `scripts/lib.sh` (`ensure_packages`) installs.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// How long a test waits for eventual state (not a budget: see benches/).
const WAIT: Duration = Duration::from_secs(30);

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// `name` on `PATH`; a missing tool fails the test with how to get it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not on PATH: install the Debian package `prometheus` (scripts/lib.sh ensure_packages does)")
        })
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn promtool_checks_the_rules_and_config_and_runs_the_rule_unit_tests() {
    let promtool = tool("promtool");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["check", "config", "prometheus.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let (ok, out) = run(Command::new(&promtool)
            .args(&args)
            .current_dir(deploy("prometheus")));
        assert!(ok, "promtool {} failed:\n{out}", args.join(" "));
    }
}

/// The rules of alerts.yml: (record or alert name, expr, labels, annotations).
fn rules() -> Vec<(String, String, Value, Value)> {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("alerts.yml");
    let doc: Value = serde_yaml_ng::from_str(&text).expect("alerts.yml is YAML");
    let mut out = Vec::new();
    for group in doc["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("alert or record name");
            let expr = rule["expr"].as_str().expect("expr");
            out.push((
                name.to_string(),
                expr.to_string(),
                rule["labels"].clone(),
                rule["annotations"].clone(),
            ));
        }
    }
    out
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation other
/// than `-` and `_` dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_severity_an_explanation_and_a_runbook_entry() {
    let readme = std::fs::read_to_string(deploy("README.md")).expect("deploy/README.md");
    let anchors: HashSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let mut alerts = 0;
    for (name, _, labels, annotations) in rules() {
        if name.contains(':') {
            continue; // a recording rule
        }
        alerts += 1;
        let severity = labels["severity"].as_str().unwrap_or("");
        assert!(
            ["page", "ticket"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for a in ["summary", "description", "runbook_url"] {
            assert!(
                annotations[a].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: no {a}"
            );
        }
        let url = annotations["runbook_url"].as_str().unwrap_or("");
        let target = url.strip_prefix("deploy/README.md#").unwrap_or("");
        assert_eq!(
            target,
            name.to_lowercase(),
            "{name}: runbook_url {url:?} should point at its own entry"
        );
        assert!(
            anchors.contains(target),
            "{name}: deploy/README.md has no heading for #{target}"
        );
    }
    assert!(alerts >= 15, "only {alerts} alerts");
}

/// Every PromQL expression of the dashboard: panel targets, and the
/// selectors inside the template variables' `label_values(...)`.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/gateway.json")).expect("gateway.json");
    let dash: Value = serde_json::from_str(&text).expect("gateway.json is JSON");
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dash["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let title = p["title"].as_str().unwrap_or("?");
                out.push((format!("panel {title:?} {}", t["refId"]), expr.to_string()));
            }
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("variable query");
        // label_values(<selector>, <label>): the selector is PromQL.
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.rsplit_once(','))
            .map(|(sel, _)| sel.trim().to_string())
            .unwrap_or_else(|| panic!("variable {}: not label_values: {q}", v["name"]));
        out.push((format!("variable {}", v["name"]), inner));
    }
    assert!(out.len() > 30, "only {} dashboard expressions", out.len());
    out
}

/// Grafana's variables, as Grafana would substitute them for this test's
/// short scrape history (1 s scrapes).
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "5s")
        .replace("$__range", "5m")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("${route}", ".*")
        .replace("$route", ".*")
}

const KEYWORDS: &[&str] = &[
    // Aggregation operators: their grouping clause may come before the
    // parenthesis (`sum by (route) (...)`).
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// The metric names `expr` reads: identifiers outside label matchers,
/// strings and ranges that are not functions, keywords or grouping labels.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: usize, close: char| {
        let mut j = i + 1;
        while j < chars.len() && chars[j] != close {
            j += 1;
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => i = skip_to(i, '}'),
            '[' => i = skip_to(i, ']'),
            '"' | '\'' | '`' => i = skip_to(i, c),
            c if c.is_ascii_digit() || c == '.' => {
                // A number (0.99, 1e3) or a duration: not a name.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let call = j < chars.len() && chars[j] == '(';
                let grouping = [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ];
                if grouping.contains(&word.as_str()) {
                    if call {
                        i = skip_to(j, ')'); // the label list
                    }
                } else if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route=~"x|y", le="0.1"}[5m])))
           / on (route) group_left sum without (instance) (b_total offset 1h) > 1e3 and c:rec:ratio
           or absent(up{job="gateway"}) unless time() - process_start_time_seconds"#,
    );
    let want: BTreeSet<String> = [
        "a_bucket",
        "b_total",
        "c:rec:ratio",
        "up",
        "process_start_time_seconds",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, want);
}

/// A `prometheus` server on a free port; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` (host:port of an admin listener) every second as
    /// job `gateway`, with deploy/prometheus/alerts.yml loaded.
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = deploy("prometheus/alerts.yml").display()
            ),
        )
        .expect("write prometheus config");
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/api/v1/query` of `expr`: Ok(data) or Err(the error Prometheus gave).
    async fn query(&self, expr: &str) -> Result<Value, String> {
        let resp = http()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| format!("request: {e}"))?;
        let body: Value = resp.json().await.map_err(|e| format!("body: {e}"))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("{}: {}", body["errorType"], body["error"]))
        }
    }

    /// The first sample's value of an instant query, if any.
    async fn scalar(&self, expr: &str) -> Option<f64> {
        let data = self.query(expr).await.ok()?;
        data["result"][0]["value"][1].as_str()?.parse().ok()
    }

    async fn metric_names(&self) -> HashSet<String> {
        let body: Value = http()
            .get(format!("{}/api/v1/label/__name__/values", self.url))
            .send()
            .await
            .expect("label values")
            .json()
            .await
            .expect("label values JSON");
        body["data"]
            .as_array()
            .expect("names")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Routes for the traffic: the harness's echo, public and dead (refused
/// connects) routes, plus a keyed route allowing one request a minute.
fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"{routes}
[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "echo"
scopes = ["read:echo"]
rate_limit = {{ per_minute = 1 }}

[redis]
url = "{redis}"
timeout_ms = 250
key_prefix = "{prefix}"

[rate_limits]
backend = "redis"
on_backend_error = "allow"

[request_logs]
flush_interval_ms = 100

[webhooks]
allow_private_targets = true
poll_interval_ms = 200
"#,
        routes = default_routes(upstream),
        redis = redis_url(),
        prefix = redis_prefix(),
    )
}

#[tokio::test]
async fn every_alert_and_dashboard_expression_evaluates_on_a_real_scrape() {
    let db = TestDb::new().await;
    let upstream = start_upstream().await;
    let gw = Gateway::start(&db, Opts::new(config(upstream))).await;

    // A webhook endpoint on the demo upstream (it answers 200 to anything),
    // so the next key change is delivered.
    let (_, admin) = gw.create_key("admin", &[]).await;
    let (status, body) = api(
        &gw,
        Method::POST,
        "/api/v1/webhooks",
        &admin,
        Some(json!({"url": format!("http://{upstream}/hook"), "events": ["api_key.*"]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (_, reader) = gw.create_key("read:echo", &[]).await;
    let (_, writer_only) = gw.create_key("write:other", &[]).await;

    // Traffic of every kind.
    assert_eq!(get(&gw.url("/echo/a"), Some(&reader)).await.0, 200);
    assert_eq!(get(&gw.url("/public/a"), None).await.0, 200);
    assert_eq!(get(&gw.url("/echo/a"), Some("gw_bad_key")).await.0, 401);
    assert_eq!(get(&gw.url("/echo/a"), None).await.0, 401);
    assert_eq!(get(&gw.url("/echo/a"), Some(&writer_only)).await.0, 403);
    assert_eq!(get(&gw.url("/dead/a"), None).await.0, 502);
    assert_eq!(get(&gw.url("/nowhere"), None).await.0, 404);
    let limited = eventually(WAIT, || async {
        get(&gw.url("/limited/a"), Some(&reader)).await.0 == 429
    })
    .await;
    assert!(limited, "the one-a-minute route never answered 429");
    let (status, _) = api(&gw, Method::GET, "/api/v1/keys", "gw_bad_admin", None).await;
    assert_eq!(status, 401);
    let delivered = eventually(WAIT, || async {
        sample(
            &metrics(&gw).await,
            r#"gateway_webhook_deliveries_total{outcome="success"}"#,
        )
        .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(delivered, "no webhook delivered; log:\n{}", gw.logs());
    let logged = eventually(WAIT, || async {
        sample(&metrics(&gw).await, "gateway_request_logs_written_total").is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(logged, "no request log written; log:\n{}", gw.logs());

    let prom = Prometheus::start(gw.admin);
    // Two successful scrapes of the gateway (1 s apart).
    let scraped = eventually(WAIT, || async {
        prom.scalar(r#"sum_over_time(up{job="gateway"}[1m])"#)
            .await
            .is_some_and(|n| n >= 2.0)
    })
    .await;
    assert!(
        scraped,
        "prometheus did not scrape the gateway twice; its log:\n{}",
        prom.logs()
    );

    let scraped_names = prom.metric_names().await;
    let recorded: HashSet<String> = rules()
        .into_iter()
        .map(|(name, ..)| name)
        .filter(|n| n.contains(':'))
        .collect();
    let mut exprs: Vec<(String, String)> = rules()
        .into_iter()
        .map(|(name, expr, ..)| (format!("alerts.yml {name}"), expr))
        .collect();
    exprs.extend(dashboard_exprs());

    let mut failures = Vec::new();
    for (source, expr) in &exprs {
        let expr = substitute(expr);
        if let Err(e) = prom.query(&expr).await {
            failures.push(format!("{source}: does not evaluate: {e}\n    {expr}"));
        }
        for name in metric_names(&expr) {
            let known = if name.contains(':') {
                recorded.contains(&name)
            } else {
                scraped_names.contains(&name)
            };
            if !known {
                failures.push(format!(
                    "{source}: reads `{name}`, which {}",
                    if name.contains(':') {
                        "no recording rule in alerts.yml defines"
                    } else {
                        "is not in the gateway's scrape"
                    }
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} expressions are broken:\n{}",
        failures.len(),
        exprs.len(),
        failures.join("\n")
    );
}
