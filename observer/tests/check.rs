//! `observer check`: what the kernel offers, whether every method's program
//! passes the verifier, and a plan of methods this kernel takes.

mod common;

use std::process::Command;

use common::{OBSERVER, require_root};

#[test]
fn every_program_passes_the_verifier_where_the_kernel_lets_it_load() {
    require_root();
    let out = Command::new(OBSERVER).args(["check", "--verify"]).env("RUST_LOG", "off").output().expect("run check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    let verdicts: Vec<&str> =
        text.lines().skip_while(|l| !l.starts_with("verifier")).skip(1).take_while(|l| l.starts_with("  ")).collect();
    assert!(verdicts.len() >= 18, "one line per method: {text}");
    for line in &verdicts {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let method = cols[1];
        // kprobe programs are plain programs: the verifier must accept them
        // even where the kernel cannot attach them (no kprobe PMU here).
        if matches!(method, "kprobe" | "tp_btf" | "raw_tracepoint" | "iter" | "sweep") {
            assert!(line.ends_with("loads"), "{method} must pass the verifier: {line}");
        } else {
            // fentry/fexit load wherever trampolines are allowed; where a
            // policy refuses them the reason is shown.
            assert!(line.ends_with("loads") || line.contains("refused:"), "{line}");
        }
    }
    let plan: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("attach plan")).skip(1).collect();
    // The hooks are the plan's: every one with a verifier line gets a plan line.
    let mut hooks: Vec<&str> = verdicts.iter().filter_map(|l| l.split_whitespace().next()).collect();
    hooks.dedup();
    assert!(hooks.len() >= 6, "send, close, state, timer, retransmit, sockets at least: {text}");
    for hook in &hooks {
        assert!(plan.iter().any(|l| l.split_whitespace().next() == Some(hook)), "{hook} planned: {text}");
    }
    // Whatever the plan picked must be something this kernel takes: its
    // program passed the kernel's verifier above, and its attach point
    // exists here (read from the kernel, not from the observer's own rule).
    let kprobe_pmu = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let vmlinux = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    for hook in hooks {
        let line = plan.iter().find(|l| l.split_whitespace().next() == Some(hook)).expect("hook line");
        let method = line.split_whitespace().nth(1).expect("method");
        if matches!(method, "tp_btf" | "raw_tracepoint") {
            // The kernel's BTF names every tracepoint it has as btf_trace_<name>.
            let target = line.split_whitespace().nth(2).expect("target");
            let name = format!("btf_trace_{target}\0");
            assert!(vmlinux.windows(name.len()).any(|w| w == name.as_bytes()), "{hook}: no tracepoint {target} here");
        }
        let verdict = verdicts
            .iter()
            .find(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                c.first() == Some(&hook) && c.get(1) == Some(&method)
            })
            .unwrap_or_else(|| panic!("{hook}: no verifier line for the planned {method}: {text}"));
        assert!(verdict.ends_with("loads"), "{hook}: planned {method}, which this kernel refused: {verdict}");
        assert!(method != "kprobe" || kprobe_pmu, "{hook}: kprobe planned without a kprobe PMU");
    }
}
