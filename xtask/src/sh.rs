//! Running commands with their output shown and their failure explained.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub fn run(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("+ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Runs quietly; true when the command exists and succeeds.
pub fn ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Captures stdout of a command that must succeed.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {program}"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// Adds up a libtest summary line (`test result: ok. 3 passed; 0 failed; 1 ignored; ...`).
pub fn add_summary(totals: &mut TestTotals, line: &str) {
    let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(label), Some(n)) = (words.next(), words.next()) else { continue };
        let Ok(n) = n.parse::<u64>() else { continue };
        match label {
            "passed" => totals.passed += n,
            "failed" => totals.failed += n,
            "ignored" => totals.ignored += n,
            _ => {}
        }
    }
}

/// Runs `cargo test`, passing its output through and adding up its summaries.
pub fn run_counting_tests(program: &str, args: &[&str]) -> Result<TestTotals> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ {program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let mut totals = TestTotals::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading test output")?;
            println!("{line}");
            add_summary(&mut totals, &line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() && totals.failed == 0 {
        bail!("`{program} {}` failed: {status}", args.join(" "));
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_libtest_summaries() {
        let mut t = TestTotals::default();
        add_summary(
            &mut t,
            "test result: ok. 53 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 2.20s",
        );
        add_summary(&mut t, "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        add_summary(&mut t, "running 3 tests");
        assert_eq!(t, TestTotals { passed: 54, failed: 2, ignored: 2 });
    }
}
