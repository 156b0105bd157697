//! The Grafana dashboard as data: its panels, their queries, and the
//! variable substitution Grafana does before a query reaches Prometheus.

use serde_json::Value;

pub struct Query {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

pub fn load(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Panels with queries, rows' nested panels included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

pub fn queries(dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                panel: p["title"].as_str().unwrap_or_default().to_string(),
                ref_id: t["refId"].as_str().unwrap_or_default().to_string(),
                expr: t["expr"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    out
}

pub fn variable<'a>(dashboard: &'a Value, name: &str) -> Option<&'a Value> {
    dashboard["templating"]["list"].as_array()?.iter().find(|v| v["name"] == name)
}

/// What Grafana sends for one instance and a given rate interval.
pub fn substitute(expr: &str, instance: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("${__rate_interval}", rate_interval)
        .replace("${instance}", instance)
        .replace("$instance", instance)
}

/// A panel's or target's datasource is the `datasource` variable.
pub fn uses_datasource_variable(v: &Value) -> bool {
    v["datasource"]["type"] == "prometheus"
        && matches!(v["datasource"]["uid"].as_str(), Some("${datasource}") | Some("$datasource"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_covers_both_spellings() {
        let e = "rate(a{instance=\"$instance\"}[$__rate_interval]) + b{instance=\"${instance}\"}";
        assert_eq!(substitute(e, "h:1", "5s"), "rate(a{instance=\"h:1\"}[5s]) + b{instance=\"h:1\"}");
    }
}
