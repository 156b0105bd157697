//! The deployment examples under `deploy/` grant exactly the capabilities the
//! README's "Least privilege" section explains, nothing privileged, and pick
//! the target by name. The three files and the README are edited by hand and
//! drift apart silently otherwise.
//!
//! Read as text, without a YAML parser: the examples keep capability lists on
//! one line on purpose. (Their YAML was also checked against the Kubernetes
//! schemas with `kubernetes-validate --strict`, which CI does not have.)

use std::{collections::BTreeSet, path::PathBuf, process::Command};

/// What a sidecar next to the server needs; the host-level variants add
/// CAP_SYS_ADMIN to enter other network namespaces.
const SIDECAR: [&str; 4] = ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Items of the one-line YAML flow sequence after `key:` (e.g. `add: ["BPF"]`).
fn flow_lists(yaml: &str, key: &str) -> Vec<BTreeSet<String>> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .map(|rest| {
            let inner = rest.trim().strip_prefix('[').and_then(|r| r.strip_suffix(']'));
            let inner = inner.unwrap_or_else(|| panic!("{key}: not a one-line list: {rest}"));
            inner.split(',').map(|s| s.trim().trim_matches('"').to_string()).filter(|s| !s.is_empty()).collect()
        })
        .collect()
}

/// The file without its comment lines (which may quote what they forbid).
fn uncommented(yaml: &str) -> String {
    yaml.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n")
}

fn assert_container_hardening(name: &str, yaml: &str, caps: &BTreeSet<String>) {
    assert!(!yaml.contains('\t'), "{name}: tabs are not YAML indentation");
    let yaml = &uncommented(yaml);
    assert!(!yaml.contains("privileged: true"), "{name}: must not be privileged");
    assert_eq!(flow_lists(yaml, "add"), vec![caps.clone()], "{name}: capabilities added");
    assert_eq!(flow_lists(yaml, "drop"), vec![set(&["ALL"])], "{name}: everything else dropped");
    for line in ["allowPrivilegeEscalation: false", "readOnlyRootFilesystem: true", "type: RuntimeDefault"] {
        assert!(yaml.contains(line), "{name}: missing `{line}`");
    }
    assert!(yaml.contains("- --comm="), "{name}: the target is picked by name");
    assert!(yaml.contains("path: /healthz"), "{name}: probes on /healthz");
}

#[test]
fn sidecar_shares_the_pod_process_namespace_with_the_sidecar_capabilities_only() {
    let yaml = repo_file("deploy/kubernetes/sidecar.yaml");
    assert_container_hardening("sidecar.yaml", &yaml, &set(&SIDECAR));
    let yaml = uncommented(&yaml);
    assert!(yaml.contains("shareProcessNamespace: true"));
    assert!(!yaml.contains("hostPID"), "a sidecar sees its pod's processes, not the host's");
}

#[test]
fn daemonset_sees_host_processes_and_may_enter_their_namespaces() {
    let yaml = repo_file("deploy/kubernetes/daemonset.yaml");
    let mut caps = set(&SIDECAR);
    caps.insert("SYS_ADMIN".into());
    assert_container_hardening("daemonset.yaml", &yaml, &caps);
    assert!(uncommented(&yaml).contains("hostPID: true"));
}

fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).collect()
}

#[test]
fn systemd_unit_grants_the_same_capabilities_to_a_dynamic_user() {
    let unit = repo_file("deploy/systemd/observer.service");
    let caps: BTreeSet<String> = SIDECAR.iter().map(|c| format!("CAP_{c}")).collect();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let values = unit_values(&unit, key);
        assert_eq!(values.len(), 1, "one {key}= line");
        let got: BTreeSet<String> = values[0].split_whitespace().map(String::from).collect();
        assert_eq!(got, caps, "{key}");
    }
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        // No kernel log, no /proc/kallsyms: nothing of CAP_SYSLOG's is needed.
        ("ProtectKernelLogs", "yes"),
    ] {
        assert_eq!(unit_values(&unit, key), vec![value], "{key}");
    }
    // These would take away what the observer needs (see the unit's comment).
    for key in ["ProtectKernelTunables", "ProtectProc", "ProcSubset", "User"] {
        assert!(unit_values(&unit, key).is_empty(), "{key}= must not be set");
    }
    let exec = unit_values(&unit, "ExecStart");
    assert!(exec.len() == 1 && exec[0].contains(" run --comm "), "ExecStart runs the observer on a name: {exec:?}");
}

#[test]
fn readme_explains_every_capability_the_examples_grant() {
    let readme = repo_file("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Least privilege"))
        .expect("README has a `## Least privilege` section");
    for cap in SIDECAR.iter().chain(&["SYS_ADMIN"]) {
        assert!(section.contains(&format!("CAP_{cap}")), "README's Least privilege section does not explain CAP_{cap}");
    }
}

/// `systemd-analyze verify` on the unit, with ExecStart pointing at the
/// observer just built (the unit names its installed path).
#[test]
fn systemd_accepts_the_unit() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipping: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    let unit =
        repo_file("deploy/systemd/observer.service").replace("/usr/local/bin/observer", env!("CARGO_BIN_EXE_observer"));
    let dir = std::env::temp_dir().join(format!("observer-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("observer.service");
    std::fs::write(&path, unit).expect("unit copy");
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
