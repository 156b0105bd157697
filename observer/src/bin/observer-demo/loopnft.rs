//! `--server-loopback` mode: no namespaces, so vanishing clients are cut off with
//! an nft table of per-port drop rules on `lo` in the caller's namespace.

use std::process::Command;

use anyhow::Result;

use crate::exec;

const TABLE_STEM: &str = "observer_demo_";

/// nft identifiers: keep to [A-Za-z0-9_].
fn sanitize(prefix: &str) -> String {
    prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// Table used by one lab run.
pub fn table_name(prefix: &str, pid: u32) -> String {
    format!("{TABLE_STEM}{}_{pid}", sanitize(prefix))
}

/// What `cleanup --name PREFIX` matches with `starts_with`.
pub fn table_prefix(prefix: &str) -> String {
    format!("{TABLE_STEM}{}", sanitize(prefix))
}

fn nft_script(script: &str) -> Result<()> {
    exec::run(Command::new("nft").args(["-f", "-"]), Some(script)).map(drop)
}

/// Creates the (initially pass-through) table.
pub fn create(table: &str) -> Result<()> {
    nft_script(&format!(
        "table inet {table} {{\n\
         \tchain input {{ type filter hook input priority 0; policy accept; }}\n\
         \tchain output {{ type filter hook output priority 0; policy accept; }}\n\
         }}\n"
    ))
}

/// Drops every loopback packet to or from the given client ports.
pub fn drop_ports(table: &str, ports: &[u16]) -> Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    nft_script(&drop_rules(table, ports))
}

fn drop_rules(table: &str, ports: &[u16]) -> String {
    let set = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let mut script = String::new();
    for (chain, dev) in [("input", "iifname"), ("output", "oifname")] {
        for dir in ["sport", "dport"] {
            script.push_str(&format!("add rule inet {table} {chain} {dev} \"lo\" tcp {dir} {{ {set} }} drop\n"));
        }
    }
    script
}

pub fn delete(table: &str) -> Result<()> {
    exec::run(Command::new("nft").args(["delete", "table", "inet", table]), None).map(drop)
}

/// Names of all `inet` tables.
pub fn list() -> Result<Vec<String>> {
    let out = exec::run(Command::new("nft").args(["list", "tables", "inet"]), None)?;
    Ok(out.lines().filter_map(|l| l.trim().strip_prefix("table inet ")).map(|name| name.trim().to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(table_name("ci-run", 42), "observer_demo_ci_run_42");
        assert!(table_name("ci-run", 42).starts_with(&table_prefix("ci-run")));
    }

    #[test]
    fn rules_cover_both_directions_on_lo() {
        let script = drop_rules("t", &[1000, 1001]);
        assert_eq!(script.lines().count(), 4);
        assert!(script.contains("add rule inet t output oifname \"lo\" tcp sport { 1000, 1001 } drop"));
        assert!(script.contains("add rule inet t input iifname \"lo\" tcp dport { 1000, 1001 } drop"));
    }
}
