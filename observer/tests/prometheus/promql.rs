//! Text rewrites on PromQL and rule files that let a short test exercise the
//! production rules unchanged apart from their `for:` durations.

/// Turns every filtering comparison (`a > 5`) into a `bool` one
/// (`a > bool 5`): the expression then returns a 0/1 sample for every series
/// its operands match instead of only the series that cross the threshold.
/// An empty result after the rewrite means the operands select nothing: a
/// misspelt metric or label, not a quiet alert.
///
/// Label matchers (`{state="x"}`) and string literals are left alone.
pub fn comparisons_as_bool(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len() + 32);
    let mut braces = 0usize;
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' && q != '`' {
                if let Some(&next) = chars.get(i + 1) {
                    out.push(next);
                    i += 1;
                }
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            _ => {}
        }
        if braces == 0
            && let Some(op) = comparison_at(&chars, i)
        {
            out.push_str(op);
            i += op.len();
            let rest: String = chars[i..].iter().collect();
            if !rest.trim_start().starts_with("bool") {
                out.push_str(" bool");
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

fn comparison_at(chars: &[char], i: usize) -> Option<&'static str> {
    let next = chars.get(i + 1).copied();
    match (chars[i], next) {
        ('=', Some('=')) => Some("=="),
        ('!', Some('=')) => Some("!="),
        ('>', Some('=')) => Some(">="),
        ('<', Some('=')) => Some("<="),
        ('>', _) => Some(">"),
        ('<', _) => Some("<"),
        _ => None,
    }
}

/// The rules file with every `for:` set to `duration`; nothing else changes.
pub fn with_for(rules_yaml: &str, duration: &str) -> String {
    rules_yaml
        .lines()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            if line.trim_start().starts_with("for:") {
                format!("{}for: {duration}", &line[..indent])
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Alert names in a rules file (`- alert: Name` lines).
pub fn alert_names(rules_yaml: &str) -> Vec<String> {
    rules_yaml.lines().filter_map(|l| l.trim_start().strip_prefix("- alert:")).map(|n| n.trim().to_string()).collect()
}

/// The `promtool test rules` cases of a test file, as (alert name, whether
/// the case expects it to fire). Reads the `alertname:` line and the
/// `exp_alerts:` line after it; `exp_alerts: []` is a must-stay-quiet case.
pub fn alert_test_cases(test_yaml: &str) -> Vec<(String, bool)> {
    let lines: Vec<&str> = test_yaml.lines().map(str::trim).collect();
    let mut cases = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("alertname:") else { continue };
        let exp = lines[i + 1..].iter().find(|l| l.starts_with("exp_alerts:"));
        if let Some(exp) = exp {
            let fires = exp.trim_start_matches("exp_alerts:").trim() != "[]";
            cases.push((name.trim().to_string(), fires));
        }
    }
    cases
}

/// Percent-encodes a query parameter value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_get_bool_outside_matchers_only() {
        assert_eq!(comparisons_as_bool("up{job=\"observer\"} == 0"), "up{job=\"observer\"} == bool 0");
        assert_eq!(comparisons_as_bool("a{x=~\"<>\"} >= 2"), "a{x=~\"<>\"} >= bool 2");
        assert_eq!(
            comparisons_as_bool("(d(a[5m]) > 64 * 1024) and on (i) (abs(b) <= 0.05 * c + 5)"),
            "(d(a[5m]) > bool 64 * 1024) and on (i) (abs(b) <= bool 0.05 * c + 5)"
        );
        assert_eq!(comparisons_as_bool("a != bool 1"), "a != bool 1");
        assert_eq!(comparisons_as_bool("a < 1 or b > 2"), "a < bool 1 or b > bool 2");
        assert_eq!(comparisons_as_bool("sum(rate(x[5m]))"), "sum(rate(x[5m]))");
    }

    #[test]
    fn only_for_lines_change() {
        let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: a > 0\n        for: 10m\n";
        let short = with_for(rules, "2s");
        assert_eq!(short, rules.replace("for: 10m", "for: 2s"));
        assert_eq!(alert_names(rules), ["A"]);
    }

    #[test]
    fn test_cases_tell_firing_from_quiet() {
        let t = "      - eval_time: 1m\n        alertname: A\n        exp_alerts: []\n      - eval_time: 2m\n        alertname: A\n        exp_alerts:\n          - exp_labels:\n";
        assert_eq!(alert_test_cases(t), [("A".to_string(), false), ("A".to_string(), true)]);
    }

    #[test]
    fn url_encoding_escapes_promql() {
        assert_eq!(url_encode("a{b=\"c\"}[5m] > 0"), "a%7Bb%3D%22c%22%7D%5B5m%5D%20%3E%200");
    }
}
