//! A real Prometheus server for one test: its own config, rules copy and
//! TSDB in a temporary directory, on a free loopback port, ended by PID.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    common::{Proc, free_port, http_get},
    promql::url_encode,
};

/// A directory removed with everything in it when the test ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("observer-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Declared after the directory it writes into, so it is dropped (stopped)
/// first.
pub struct Prometheus {
    pub proc: Proc,
    pub addr: String,
    log: PathBuf,
}

/// Fails with a hint when a tool `cargo xtask setup` installs is missing.
pub fn require_tool(name: &str) {
    let found = Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "`{name}` not found: `cargo xtask setup` installs Debian's prometheus package"
    );
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job "observer") every second and
    /// evaluating `rules_yaml` every second; waits until it is ready.
    pub fn start(dir: &Path, targets: &[&str], rules_yaml: &str) -> Prometheus {
        require_tool("prometheus");
        let rules = dir.join("alerts.yml");
        fs::write(&rules, rules_yaml).expect("write rules");
        let list = targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: observer\n    static_configs:\n      - targets: [{list}]\n",
            rules.display()
        );
        let config_path = dir.join("prometheus.yml");
        fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let log_file = fs::File::create(&log).expect("create prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log file"))
            .stderr(log_file)
            .spawn()
            .expect("start prometheus");
        let mut prom = Prometheus { proc: Proc { child, name: "prometheus" }, addr, log };
        prom.wait(Duration::from_secs(30), "Prometheus /-/ready", |p| {
            http_get(&p.addr, "/-/ready").ok().filter(|(code, _)| *code == 200).map(|_| ())
        });
        prom
    }

    /// Polls `f` every 250 ms for at most `limit`; on timeout the panic
    /// carries the end of Prometheus's log.
    pub fn wait<T>(&mut self, limit: Duration, what: &str, mut f: impl FnMut(&Prometheus) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                panic!("prometheus exited early ({status}):\n{}", self.log_tail());
            }
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; prometheus log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// GETs an API path and returns `data`, panicking on any API error.
    pub fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(&self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        assert_eq!(code, 200, "GET {path}: {body}");
        assert_eq!(v["status"], "success", "GET {path}: {body}");
        v["data"].clone()
    }

    /// An instant query: (status, the result vector or the error text).
    pub fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (_, body) = http_get(&self.addr, &path).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Health of every scrape target by instance.
    pub fn target_health(&self) -> Vec<(String, String)> {
        let data = self.api("/api/v1/targets");
        data["activeTargets"]
            .as_array()
            .map(|ts| ts.iter().map(|t| (str_of(&t["labels"]["instance"]), str_of(&t["health"]))).collect())
            .unwrap_or_default()
    }

    /// Active alerts (pending or firing) as (name, instance, state).
    pub fn alerts(&self) -> Vec<(String, String, String)> {
        let data = self.api("/api/v1/alerts");
        data["alerts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|a| (str_of(&a["labels"]["alertname"]), str_of(&a["labels"]["instance"]), str_of(&a["state"])))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Alerting rules as loaded: (name, expression as Prometheus prints it).
    pub fn alert_rules(&self) -> Vec<(String, String)> {
        let data = self.api("/api/v1/rules?type=alert");
        let mut out = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                out.push((str_of(&rule["name"]), str_of(&rule["query"])));
            }
        }
        out
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}
