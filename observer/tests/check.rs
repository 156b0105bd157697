//! `observer check`: what the kernel offers, whether every method's program
//! passes the verifier, and the plan the selection rule picks.

mod common;

use std::process::Command;

use common::{OBSERVER, require_root};

#[test]
fn every_program_passes_the_verifier_where_the_kernel_lets_it_load() {
    require_root();
    let out = Command::new(OBSERVER).args(["check", "--verify"]).env("RUST_LOG", "off").output().expect("run check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let verdicts: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("verifier"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert!(verdicts.len() >= 18, "one line per method: {text}");
    for line in &verdicts {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let method = cols[1];
        // kprobe programs are plain programs: the verifier must accept them
        // even where the kernel cannot attach them (no kprobe PMU here).
        if matches!(method, "kprobe" | "tp_btf" | "raw_tracepoint" | "tracepoint" | "iter" | "sweep") {
            assert!(line.ends_with("loads"), "{method} must pass the verifier: {line}");
        } else {
            // fentry/fexit load wherever trampolines are allowed; where a
            // policy refuses them the reason is shown.
            assert!(line.ends_with("loads") || line.contains("refused:"), "{line}");
        }
    }
    let plan: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("attach plan")).skip(1).collect();
    for hook in ["send", "close", "state", "timer", "retransmit", "sockets"] {
        assert!(plan.iter().any(|l| l.split_whitespace().next() == Some(hook)), "{hook} planned: {text}");
    }
    let kprobes = text.lines().any(|l| l.trim_start().starts_with("kprobes") && l.trim_end().ends_with("yes"));
    let send = plan.iter().find(|l| l.split_whitespace().next() == Some("send")).expect("send line");
    let send_method = send.split_whitespace().nth(1).expect("method");
    let fexit_loads = verdicts.iter().any(|l| l.contains("fexit") && l.ends_with("loads"));
    // The selection rule, checked against what this kernel offers.
    let expected = if fexit_loads { "fexit" } else if kprobes { "kprobe" } else { "tp_btf" };
    assert_eq!(send_method, expected, "plan:\n{text}");
}
