//! The monitoring stack against real parts: promtool on the alert rules, the
//! Grafana dashboard's structure, and a real Prometheus scraping real
//! observers attached to the demo server — one lab with zombies, one with
//! healthy clients only — evaluating the production rules (only `for:`
//! shortened) and every dashboard query.

mod common;
// A crate root looks for modules beside itself; these live in prometheus/.
#[path = "prometheus/dashboard.rs"]
mod dashboard;
#[path = "prometheus/promql.rs"]
mod promql;
#[path = "prometheus/server.rs"]
mod server;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use server::{Prometheus, TempDir, require_tool};

const FAST: &[&str] = &["--dead-after", "3", "--close-wait-after", "3", "--stall-after", "3", "--interval", "0.5"];
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../grafana/dashboards/observer.json");
const GRAFANA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../grafana");
const PROM_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
/// Stands in for Grafana's `$__rate_interval` at a 1 s scrape interval
/// (Grafana's floor is four scrape intervals).
const RATE_INTERVAL: &str = "5s";
/// The test copy of the rules keeps every expression, only `for:` shrinks.
const TEST_FOR: &str = "3s";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn promtool(args: &[&str]) -> String {
    require_tool("promtool");
    let out = Command::new("promtool").args(args).current_dir(PROM_DIR).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    text
}

#[test]
fn alert_rules_pass_promtool_and_every_alert_has_unit_tests() {
    let check = promtool(&["check", "rules", "alerts.yml"]);
    let names = promql::alert_names(&read(&format!("{PROM_DIR}/alerts.yml")));
    assert!(check.contains(&format!("SUCCESS: {} rules found", names.len())), "{check}");
    promtool(&["check", "config", "prometheus.example.yml"]);
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    for required in [
        "ObserverZombieSockets",
        "ObserverMemoryGrowsConnectionsFlat",
        "ObserverCloseWaitAccumulating",
        "ObserverTargetDown",
        "ObserverDown",
        "ObserverDroppingEvents",
    ] {
        assert!(names.iter().any(|n| n == required), "alerts.yml lacks {required}: {names:?}");
    }
    let cases = promql::alert_test_cases(&read(&format!("{PROM_DIR}/alerts_test.yml")));
    for name in &names {
        let has = |fires: bool| cases.iter().any(|(n, f)| n == name && *f == fires);
        assert!(has(true), "alerts_test.yml has no case where {name} fires");
        assert!(has(false), "alerts_test.yml has no case where {name} stays quiet");
    }
}

#[test]
fn dashboard_provisions_with_variables_on_every_panel() {
    let d = dashboard::load(DASHBOARD);
    assert_eq!(d["uid"], "observer", "a stable uid keeps links and provisioning updates working");

    let ds = dashboard::variable(&d, "datasource").expect("a `datasource` variable");
    assert_eq!((ds["type"].as_str(), ds["query"].as_str()), (Some("datasource"), Some("prometheus")));
    let inst = dashboard::variable(&d, "instance").expect("an `instance` variable");
    assert!(dashboard::uses_datasource_variable(inst), "the instance variable must query through $datasource");
    let inst_query = inst["query"].as_str().or_else(|| inst["query"]["query"].as_str());
    assert_eq!(inst_query, Some("label_values(observer_target_up, instance)"));

    let panels = dashboard::panels(&d);
    let mut ids: Vec<i64> = panels.iter().filter_map(|p| p["id"].as_i64()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "every panel needs its own id");
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(dashboard::uses_datasource_variable(p), "panel {title:?} does not use the datasource variable");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("panel {title:?} has no queries"));
        for t in targets {
            assert!(
                dashboard::uses_datasource_variable(t),
                "a query of {title:?} does not use the datasource variable"
            );
        }
    }

    let queries = dashboard::queries(&d);
    for q in &queries {
        assert!(
            q.expr.contains("instance=\"$instance\""),
            "{} {}: not filtered on $instance: {}",
            q.panel,
            q.ref_id,
            q.expr
        );
        // Every range selector is a rate window and must follow the scrape
        // interval, not a hard-coded one.
        let windows = q.expr.matches('[').count();
        assert_eq!(
            windows,
            q.expr.matches("[$__rate_interval]").count(),
            "{} {}: fixed window in {}",
            q.panel,
            q.ref_id,
            q.expr
        );
        let sent = dashboard::substitute(&q.expr, "h:1", RATE_INTERVAL);
        assert!(!sent.contains('$'), "{} {}: unknown variable in {}", q.panel, q.ref_id, q.expr);
    }
    for metric in [
        "observer_target_rss_bytes",
        "observer_target_pss_bytes",
        "observer_tcp_sockets",
        "observer_zombie_sockets",
        "observer_stalled_sockets",
        "observer_unsent_bytes",
        "observer_unacked_bytes",
        "observer_send_queue_bytes",
        "observer_zombie_queued_bytes",
        "observer_connections_opened_total",
        "observer_connections_closed_total",
        "observer_retransmits_total",
        "observer_rto_timeouts_total",
        "observer_zero_window_probes_total",
        "observer_tracked_sockets",
        "observer_events_dropped_total",
        "observer_probe_info",
    ] {
        assert!(queries.iter().any(|q| q.expr.contains(metric)), "no panel shows {metric}");
    }

    // The tell: RSS, ESTABLISHED and zombie + stalled on one time axis, RSS
    // on the right.
    let tell = panels
        .iter()
        .find(|p| {
            let exprs: Vec<&str> =
                p["targets"].as_array().into_iter().flatten().filter_map(|t| t["expr"].as_str()).collect();
            let has = |s: &str| exprs.iter().any(|e| e.contains(s));
            has("observer_target_rss_bytes")
                && has("state=\"established\"")
                && exprs.iter().any(|e| e.contains("observer_zombie_sockets") && e.contains("observer_stalled_sockets"))
        })
        .expect("a panel with RSS, ESTABLISHED and zombie + stalled sockets");
    assert_eq!(tell["type"], "timeseries");
    let rss_ref = tell["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["expr"].as_str().is_some_and(|e| e.contains("observer_target_rss_bytes")))
        .and_then(|t| t["refId"].as_str())
        .expect("RSS query refId");
    let right = tell["fieldConfig"]["overrides"].as_array().into_iter().flatten().any(|o| {
        o["matcher"]["options"] == rss_ref
            && o["properties"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["id"] == "custom.axisPlacement" && p["value"] == "right")
    });
    assert!(right, "RSS must sit on the right axis of {:?}", tell["title"]);
    let probe_table = panels.iter().find(|p| p["type"] == "table" && p.to_string().contains("observer_probe_info"));
    assert!(probe_table.is_some(), "probe methods belong in a table panel");

    // Provisioning: the data source is a Prometheus, and the dashboard
    // provider reads the folder the README tells people to mount.
    let datasources = read(&format!("{GRAFANA_DIR}/provisioning/datasources/prometheus.yaml"));
    assert!(datasources.contains("type: prometheus"), "{datasources}");
    let provider = read(&format!("{GRAFANA_DIR}/provisioning/dashboards/observer.yaml"));
    let path = provider.lines().find_map(|l| l.trim().strip_prefix("path:")).map(str::trim).expect("a provider path");
    assert!(
        read(&format!("{GRAFANA_DIR}/README.md")).contains(&format!("grafana/dashboards:{path}")),
        "README's mount differs from the provider path {path}"
    );
}

#[test]
fn real_prometheus_evaluates_dashboard_and_alerts_on_the_demo() {
    require_root();
    require_tool("prometheus");
    let started = Instant::now();
    let tmp = TempDir::new("prometheus");

    let sick_lab = start_lab(&["--healthy", "1", "--vanish", "1", "--halfclose", "1", "--duration-secs", "120"]);
    let healthy_lab = start_lab(&["--healthy", "3", "--duration-secs", "120"]);
    let observer_for = |lab: &Lab| {
        let pid = lab.server_pid.to_string();
        let mut args = vec!["--pid", pid.as_str()];
        args.extend_from_slice(FAST);
        (start_observer(&args), Instant::now())
    };
    let (sick, sick_since) = observer_for(&sick_lab);
    let (healthy, healthy_since) = observer_for(&healthy_lab);

    let rules = promql::with_for(&read(&format!("{PROM_DIR}/alerts.yml")), TEST_FOR);
    let mut prom = Prometheus::start(&tmp.0, &[&sick.addr, &healthy.addr], &rules);

    prom.wait(Duration::from_secs(30), "both observers up in Prometheus", |p| {
        let health = p.target_health();
        (health.len() == 2 && health.iter().all(|(_, h)| h == "up")).then_some(())
    });
    let loaded = prom.alert_rules();
    let names = promql::alert_names(&rules);
    assert_eq!(loaded.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), names, "Prometheus loaded other rules");

    // The dashboard's instance variable lists both observers.
    let instances = prom.api("/api/v1/label/instance/values?match%5B%5D=observer_target_up");
    for addr in [&sick.addr, &healthy.addr] {
        assert!(
            instances.as_array().is_some_and(|a| a.iter().any(|v| v == addr.as_str())),
            "{addr} not in {instances}"
        );
    }

    // The zombie alert fires for the lab with a vanished and a half-closed
    // client.
    let firing = |p: &Prometheus, instance: &str| {
        p.alerts().iter().any(|(n, i, s)| n == "ObserverZombieSockets" && i == instance && s == "firing")
    };
    prom.wait(Duration::from_secs(45), "ObserverZombieSockets firing for the zombie lab", |p| {
        firing(p, &sick.addr).then_some(())
    });
    let fired_after = sick_since.elapsed();

    // Every panel query returns data for the zombie lab's instance.
    let d = dashboard::load(DASHBOARD);
    for q in dashboard::queries(&d) {
        let sent = dashboard::substitute(&q.expr, &sick.addr, RATE_INTERVAL);
        let what = format!("panel {:?} query {}: {sent}", q.panel, q.ref_id);
        let result = prom.wait(Duration::from_secs(10), &what, |p| match p.query(&sent) {
            Err(e) => panic!("{what} does not parse: {e}"),
            Ok(r) => (!r.is_empty()).then_some(r),
        });
        assert!(!result.is_empty(), "{what}");
    }

    // Every alert expression parses as written and, with its thresholds
    // turned into 0/1 comparisons, selects series from these observers.
    for (name, expr) in &loaded {
        if let Err(e) = prom.query(expr) {
            panic!("{name}: {expr} does not parse: {e}");
        }
        let signal = promql::comparisons_as_bool(expr);
        let result = prom.query(&signal).unwrap_or_else(|e| panic!("{name}: {signal}: {e}"));
        assert!(!result.is_empty(), "{name}: {signal} selects no series");
    }

    // The healthy lab, watched for as long as the zombie lab took to fire
    // (plus a few evaluations), raises nothing, neither pending nor firing;
    // and not for want of data: the zombie alert's input is there and zero,
    // and the healthy clients are connected.
    let quiet_for = fired_after + Duration::from_secs(3);
    if let Some(rest) = quiet_for.checked_sub(healthy_since.elapsed()) {
        std::thread::sleep(rest);
    }
    let alerts = prom.alerts();
    let healthy_alerts: Vec<_> = alerts.iter().filter(|(_, i, _)| *i == healthy.addr).collect();
    assert!(healthy_alerts.is_empty(), "alerts for the healthy lab after {quiet_for:?}: {healthy_alerts:?}");
    let zombies = prom
        .query(&format!("sum by (instance) (observer_zombie_sockets{{instance=\"{}\"}})", healthy.addr))
        .expect("query healthy zombies");
    assert_eq!(zombies.len(), 1, "no zombie series for the healthy observer: {zombies:?}");
    assert_eq!(zombies[0]["value"][1], "0", "the healthy lab has zombies: {zombies:?}");
    let established = prom
        .query(&format!("observer_tcp_sockets{{instance=\"{}\", state=\"established\"}}", healthy.addr))
        .expect("query healthy established");
    assert_eq!(established.first().map(|s| s["value"][1].clone()), Some("3".into()), "healthy clients not connected");
    assert!(firing(&prom, &sick.addr), "the zombie alert stopped firing: {alerts:?}");

    eprintln!(
        "prometheus test: zombie alert fired {fired_after:?} after the observer started; healthy lab quiet for {:?}; total {:?}",
        healthy_since.elapsed(),
        started.elapsed()
    );
    prom.proc.stop();
}
