//! Reading what the guest printed on its console and what `observer check`
//! printed on either kernel, and tallying the checks.

/// One row of `observer check`'s attach plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    pub hook: String,
    pub method: String,
}

/// One row of `observer check --verify`'s verifier table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyRow {
    pub hook: String,
    pub method: String,
    pub target: String,
    pub verdict: String,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Check {
    pub capabilities: Vec<(String, bool)>,
    pub verifier: Vec<VerifyRow>,
    pub plan: Vec<PlanRow>,
}

impl Check {
    /// Parses `observer check [--verify]` output; log lines mixed in (from
    /// stderr, `[...]`) and `passed over` explanations are skipped.
    pub fn parse(text: &str) -> Check {
        #[derive(PartialEq)]
        enum Section {
            None,
            Caps,
            Verifier,
            Plan,
        }
        let mut check = Check::default();
        let mut section = Section::None;
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('[') || t.is_empty() {
                continue;
            }
            if !line.starts_with(' ') {
                section = if t.starts_with("kernel capabilities") {
                    Section::Caps
                } else if t.starts_with("verifier") {
                    Section::Verifier
                } else if t.starts_with("attach plan") {
                    Section::Plan
                } else {
                    Section::None
                };
                continue;
            }
            let words: Vec<&str> = t.split_whitespace().collect();
            match section {
                Section::Caps => {
                    if let Some((yes_no, name)) = words.split_last() {
                        check.capabilities.push((name.join(" "), *yes_no == "yes"));
                    }
                }
                Section::Verifier if words.len() >= 4 => {
                    // The verdict is the rest of the line after three columns.
                    check.verifier.push(VerifyRow {
                        hook: words[0].into(),
                        method: words[1].into(),
                        target: words[2].into(),
                        verdict: rest_after(t, 3).into(),
                    });
                }
                Section::Plan if words.len() >= 2 && words[0] != "passed" => {
                    check.plan.push(PlanRow { hook: words[0].into(), method: words[1].into() });
                }
                _ => {}
            }
        }
        check
    }

    pub fn method_of(&self, hook: &str) -> Option<&str> {
        self.plan.iter().find(|r| r.hook == hook).map(|r| r.method.as_str())
    }

    pub fn capability(&self, prefix: &str) -> Option<bool> {
        self.capabilities.iter().find(|(n, _)| n.starts_with(prefix)).map(|(_, v)| *v)
    }
}

/// `s` after its first `n` whitespace-separated words.
fn rest_after(s: &str, n: usize) -> &str {
    let mut rest = s.trim_start();
    for _ in 0..n {
        rest = rest.trim_start();
        rest = rest.find(char::is_whitespace).map_or("", |i| &rest[i..]);
    }
    rest.trim()
}

/// What the guest reported on its serial console.
#[derive(Debug, Default)]
pub struct Guest {
    pub kernel: Option<String>,
    pub check: Check,
    /// (passed, text) per `VMTEST-CHECK` line.
    pub checks: Vec<(bool, String)>,
    pub result: Option<bool>,
}

impl Guest {
    pub fn parse(serial: &str) -> Guest {
        let mut g = Guest::default();
        let mut check_text = String::new();
        let mut in_check = false;
        for line in serial.lines() {
            // The marker may follow kernel output on the same console line.
            let Some(at) = line.find("VMTEST-") else {
                if in_check {
                    check_text.push_str(line);
                    check_text.push('\n');
                }
                continue;
            };
            let m = &line[at..];
            if m == "VMTEST-BEGIN check" {
                in_check = true;
            } else if m == "VMTEST-END check" {
                in_check = false;
            } else if let Some(k) = m.strip_prefix("VMTEST-KERNEL ") {
                g.kernel = Some(k.trim().to_string());
            } else if let Some(rest) = m.strip_prefix("VMTEST-CHECK ") {
                let (word, text) = rest.split_once(' ').unwrap_or((rest, ""));
                g.checks.push((word == "ok", text.trim().to_string()));
            } else if let Some(r) = m.strip_prefix("VMTEST-RESULT: ") {
                g.result = Some(r.trim() == "PASS");
            } else if in_check {
                check_text.push_str(line);
                check_text.push('\n');
            }
        }
        g.check = Check::parse(&check_text);
        g
    }
}

/// Checks made on the host side, printed as they are made.
#[derive(Debug, Default)]
pub struct Tally {
    pub passed: u32,
    pub failed: u32,
}

impl Tally {
    /// Counts a check already printed elsewhere (the guest's own lines);
    /// a failure is repeated so it shows next to the summary.
    pub fn count(&mut self, ok: bool, what: &str) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            println!("vmtest: FAIL {what}");
        }
    }

    pub fn check(&mut self, ok: bool, what: &str) {
        if ok {
            self.passed += 1;
            println!("vmtest: ok   {what}");
        } else {
            self.failed += 1;
            println!("vmtest: FAIL {what}");
        }
    }
}

/// The two plans side by side, one hook a row.
pub fn side_by_side(hooks: &[&str], columns: &[(&str, &Check)]) -> String {
    let mut out = format!("  {:<11}", "hook");
    for (title, _) in columns {
        out.push_str(&format!(" {title:<34}"));
    }
    out.push('\n');
    for hook in hooks {
        out.push_str(&format!("  {hook:<11}"));
        for (_, c) in columns {
            out.push_str(&format!(" {:<34}", c.method_of(hook).unwrap_or("-")));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK: &str = "\
kernel capabilities:
  btf                          yes
  trampolines (fentry/fexit)   yes
  kprobes                      no
verifier, per method (load only, no attach):
  send       fexit          tcp_sendmsg                  loads
  send       kprobe         tcp_sendmsg                  refused: the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1). Verifier output:
[2025-01-01T00:00:00Z WARN  observer::probes::loader] timer hook via timer_expire_entry unavailable
attach plan on this kernel:
  send       tp_btf         sock_send_length
               passed over kprobe: kernel lacks kprobes
  close      sweep          tcp
  timer      none           (fentry: refused)
";

    #[test]
    fn parses_capabilities_verifier_and_plan() {
        let c = Check::parse(CHECK);
        assert_eq!(c.capability("trampolines"), Some(true));
        assert_eq!(c.capability("kprobes"), Some(false));
        assert_eq!(c.verifier.len(), 2);
        assert_eq!(c.verifier[0].verdict, "loads");
        assert!(c.verifier[1].verdict.starts_with("refused: the BPF_PROG_LOAD"), "{}", c.verifier[1].verdict);
        assert_eq!(c.verifier[1].target, "tcp_sendmsg");
        assert_eq!(c.method_of("send"), Some("tp_btf"));
        assert_eq!(c.method_of("close"), Some("sweep"));
        assert_eq!(c.method_of("timer"), Some("none"));
        assert_eq!(c.plan.len(), 3, "passed-over lines are not plan rows");
    }

    #[test]
    fn parses_the_guest_console() {
        let serial = format!(
            "SeaBIOS\nVMTEST-KERNEL 6.1.0-56-cloud-amd64\nVMTEST-BEGIN check\n{CHECK}VMTEST-END check\n\
             [    5.1] random: crng init done VMTEST-CHECK ok   auto: probe_info send=fexit\n\
             VMTEST-CHECK FAIL auto: observer_retransmits_total = 0 < 1\nVMTEST-RESULT: FAIL\n"
        );
        let g = Guest::parse(&serial);
        assert_eq!(g.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(g.check.method_of("send"), Some("tp_btf"));
        assert_eq!(
            g.checks,
            vec![
                (true, "auto: probe_info send=fexit".to_string()),
                (false, "auto: observer_retransmits_total = 0 < 1".to_string()),
            ]
        );
        assert_eq!(g.result, Some(false));
    }

    #[test]
    fn missing_marker_is_no_result() {
        let g = Guest::parse("Kernel panic - not syncing\n");
        assert_eq!(g.result, None);
        assert!(g.checks.is_empty());
    }

    #[test]
    fn side_by_side_shows_a_dash_for_unknown_hooks() {
        let c = Check::parse(CHECK);
        let table = side_by_side(&["send", "retransmit"], &[("host", &c), ("guest", &Check::default())]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["send", "tp_btf", "-"]);
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["retransmit", "-", "-"]);
    }
}
