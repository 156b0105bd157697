//! Tracepoint record layouts from tracefs `format` files.
//!
//! A format file (e.g. `/sys/kernel/tracing/events/sock/inet_sock_set_state/format`)
//! describes each field of the raw record as (`\t` being a tab)
//!
//! ```text
//! \tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
//! ```
//!
//! [`parse_format`] turns that into [`Field`]s so offsets need not be
//! hard-coded for one kernel version.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where tracefs is usually mounted, in order of preference.
pub const TRACEFS_CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Longest input excerpt quoted in an error message.
const MAX_QUOTED: usize = 64;

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name: the last identifier of the declaration, without array
    /// suffix (`__u8 saddr[4]` -> `saddr`, `__data_loc char[] name` -> `name`).
    pub name: String,
    /// Byte offset from the start of the record (including the common header).
    pub offset: u32,
    /// Size in bytes. For `__data_loc` fields this is the size of the
    /// (offset, length) locator, not of the data.
    pub size: u32,
    /// Whether the kernel marks the field as signed.
    pub signed: bool,
}

/// Errors from finding, reading or parsing a tracepoint format. `Display` is
/// a one-line message meant for operators.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A `field:` line lacks `offset:`, `size:` or `signed:`.
    #[error("malformed tracepoint format, line {line}: missing {attribute}")]
    MissingAttribute { line: usize, attribute: &'static str },
    /// `offset:`, `size:` or `signed:` has a value we cannot interpret.
    #[error("malformed tracepoint format, line {line}: invalid {attribute} value {value:?}")]
    InvalidAttribute {
        line: usize,
        attribute: &'static str,
        /// The offending text, cut to a few dozen characters.
        value: String,
    },
    /// A `field:` declaration has no identifier after its type.
    #[error("malformed tracepoint format, line {line}: no field name in declaration {declaration:?}")]
    MissingFieldName { line: usize, declaration: String },
    /// The text has no `field:` line at all.
    #[error("tracepoint format has no fields")]
    NoFields,
    /// [`field_offset`] was asked for a field the format does not have.
    #[error("tracepoint field {name:?} not found in format")]
    FieldNotFound { name: String },
    /// Neither candidate directory has an `events` directory.
    #[error(
        "tracefs is not mounted (no events directory in /sys/kernel/tracing or \
         /sys/kernel/debug/tracing); mount it with: mount -t tracefs nodev /sys/kernel/tracing"
    )]
    NotMounted,
    /// Category or event name is empty or could escape the events directory.
    #[error("invalid tracepoint name {category:?}/{event:?}")]
    InvalidName { category: String, event: String },
    /// No format file for this tracepoint: the kernel does not have it.
    #[error("tracepoint {category}/{event} does not exist in this kernel ({} not found)", path.display())]
    EventNotFound { category: String, event: String, path: PathBuf },
    /// The format file exists but may not be read.
    #[error("permission denied reading {} (run as root)", path.display())]
    PermissionDenied { path: PathBuf },
    /// The format file is not UTF-8.
    #[error("tracepoint format {} is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    /// Any other I/O failure.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Parses the text of a tracepoint `format` file into its fields, in file
/// order (common header fields included).
///
/// Only lines starting with `field:` (after blanks) are considered; `name:`,
/// `ID:`, `print fmt:` and blank lines are ignored. Each field line needs
/// `offset:`, `size:` and `signed:` attributes; unknown attributes are
/// ignored, and for repeated ones the first wins.
pub fn parse_format(text: &str) -> Result<Vec<Field>, FormatError> {
    let mut fields = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("field:") else {
            continue;
        };
        fields.push(parse_field_line(rest, index + 1)?);
    }
    if fields.is_empty() {
        return Err(FormatError::NoFields);
    }
    Ok(fields)
}

/// Returns the offset of the first field called `name`.
pub fn field_offset(fields: &[Field], name: &str) -> Result<u32, FormatError> {
    fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.offset)
        .ok_or_else(|| FormatError::FieldNotFound { name: name.to_owned() })
}

/// Returns the first of `/sys/kernel/tracing` and `/sys/kernel/debug/tracing`
/// that has an `events` directory, i.e. where tracefs is mounted.
pub fn tracefs_root() -> Option<PathBuf> {
    first_with_events(TRACEFS_CANDIDATES.iter().map(Path::new))
}

/// Reads and parses `<tracefs>/events/<category>/<event>/format`.
pub fn read_format(category: &str, event: &str) -> Result<Vec<Field>, FormatError> {
    check_name(category, event)?;
    let root = tracefs_root().ok_or(FormatError::NotMounted)?;
    read_format_in(&root, category, event)
}

/// Like [`read_format`] with an explicit tracefs root (as returned by
/// [`tracefs_root`]).
pub fn read_format_in(root: &Path, category: &str, event: &str) -> Result<Vec<Field>, FormatError> {
    check_name(category, event)?;
    let path = root.join("events").join(category).join(event).join("format");
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FormatError::EventNotFound { category: category.to_owned(), event: event.to_owned(), path });
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(FormatError::PermissionDenied { path });
        }
        Err(source) => return Err(FormatError::Io { path, source }),
    };
    let text = String::from_utf8(bytes).map_err(|_| FormatError::NotUtf8 { path })?;
    parse_format(&text)
}

fn first_with_events<'a>(candidates: impl IntoIterator<Item = &'a Path>) -> Option<PathBuf> {
    candidates.into_iter().find(|root| root.join("events").is_dir()).map(Path::to_path_buf)
}

/// Tracepoint names are single path components: reject anything that could
/// point elsewhere (`..`, `/`, NUL) or is empty.
fn check_name(category: &str, event: &str) -> Result<(), FormatError> {
    let ok = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']);
    if ok(category) && ok(event) {
        Ok(())
    } else {
        Err(FormatError::InvalidName { category: category.to_owned(), event: event.to_owned() })
    }
}

/// Parses what follows `field:` on one line:
/// `<declaration>;\toffset:N;\tsize:N;\tsigned:N;`
fn parse_field_line(rest: &str, line: usize) -> Result<Field, FormatError> {
    let mut parts = rest.split(';');
    let declaration = parts.next().unwrap_or_default();
    let mut offset = None;
    let mut size = None;
    let mut signed = None;
    for part in parts {
        let Some((key, value)) = part.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "offset" if offset.is_none() => offset = Some(parse_u32(value, "offset", line)?),
            "size" if size.is_none() => size = Some(parse_u32(value, "size", line)?),
            "signed" if signed.is_none() => {
                signed = Some(match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(invalid(value, "signed", line)),
                });
            }
            _ => {}
        }
    }
    let missing = |attribute| FormatError::MissingAttribute { line, attribute };
    Ok(Field {
        name: field_name(declaration)
            .ok_or_else(|| FormatError::MissingFieldName { line, declaration: quote(declaration.trim()) })?,
        offset: offset.ok_or_else(|| missing("offset"))?,
        size: size.ok_or_else(|| missing("size"))?,
        signed: signed.ok_or_else(|| missing("signed"))?,
    })
}

/// The last identifier of a C declaration, after dropping array suffixes:
/// `const void * skaddr` -> `skaddr`, `__u8 saddr[4]` -> `saddr`,
/// `char comm[TASK_COMM_LEN]` -> `comm`, `__data_loc char[] name` -> `name`.
/// `None` if there is no identifier or nothing (no type) before it.
fn field_name(declaration: &str) -> Option<String> {
    let mut decl = declaration.trim();
    while let Some(inner) = decl.strip_suffix(']') {
        let open = inner.rfind('[')?;
        decl = inner.get(..open)?.trim_end();
    }
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let start = decl.char_indices().rev().take_while(|&(_, c)| is_ident(c)).last().map(|(i, _)| i)?;
    let (type_part, name) = (decl.get(..start)?, decl.get(start..)?);
    let starts_like_ident = name.chars().next().is_some_and(|c| !c.is_ascii_digit());
    if type_part.trim().is_empty() || !starts_like_ident {
        return None;
    }
    Some(name.to_owned())
}

/// Strict unsigned decimal u32 (no sign, no blanks inside, no overflow).
fn parse_u32(value: &str, attribute: &'static str, line: usize) -> Result<u32, FormatError> {
    let parsed =
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) { value.parse::<u32>().ok() } else { None };
    parsed.ok_or_else(|| invalid(value, attribute, line))
}

fn invalid(value: &str, attribute: &'static str, line: usize) -> FormatError {
    FormatError::InvalidAttribute { line, attribute, value: quote(value) }
}

fn quote(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}...", value.get(..cut).unwrap_or_default()),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Verbatim format files captured from Linux 6.18 (x86_64).
    const INET_SOCK_SET_STATE: &str = "\
        name: inet_sock_set_state\n\
        ID: 2287\n\
        format:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
        \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
        \n\
        \tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
        \tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;\n\
        \tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n\
        \tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n\
        \tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;\n\
        \tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
        \tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n\
        \n\
        print fmt: \"family=%s protocol=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c oldstate=%s newstate=%s\", __print_symbolic(REC->family, { 2, \"AF_INET\" }, { 10, \"AF_INET6\" }), __print_symbolic(REC->protocol, { 6, \"IPPROTO_TCP\" }, { 132, \"IPPROTO_SCTP\" }, { 262, \"IPPROTO_MPTCP\" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6, __print_symbolic(REC->oldstate, { 1, \"TCP_ESTABLISHED\" }, { 2, \"TCP_SYN_SENT\" }, { 3, \"TCP_SYN_RECV\" }, { 4, \"TCP_FIN_WAIT1\" }, { 5, \"TCP_FIN_WAIT2\" }, { 6, \"TCP_TIME_WAIT\" }, { 7, \"TCP_CLOSE\" }, { 8, \"TCP_CLOSE_WAIT\" }, { 9, \"TCP_LAST_ACK\" }, { 10, \"TCP_LISTEN\" }, { 11, \"TCP_CLOSING\" }, { 12, \"TCP_NEW_SYN_RECV\" }), __print_symbolic(REC->newstate, { 1, \"TCP_ESTABLISHED\" }, { 2, \"TCP_SYN_SENT\" }, { 3, \"TCP_SYN_RECV\" }, { 4, \"TCP_FIN_WAIT1\" }, { 5, \"TCP_FIN_WAIT2\" }, { 6, \"TCP_TIME_WAIT\" }, { 7, \"TCP_CLOSE\" }, { 8, \"TCP_CLOSE_WAIT\" }, { 9, \"TCP_LAST_ACK\" }, { 10, \"TCP_LISTEN\" }, { 11, \"TCP_CLOSING\" }, { 12, \"TCP_NEW_SYN_RECV\" })\n\
    ";
    const TCP_RETRANSMIT_SKB: &str = "\
        name: tcp_retransmit_skb\n\
        ID: 2281\n\
        format:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
        \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
        \n\
        \tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;\n\
        \tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;\n\
        \tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;\n\
        \tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;\n\
        \tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;\n\
        \tfield:int err;\toffset:76;\tsize:4;\tsigned:1;\n\
        \n\
        print fmt: \"skbaddr=%p skaddr=%p family=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c state=%s err=%d\", REC->skbaddr, REC->skaddr, __print_symbolic(REC->family, { 2, \"AF_INET\" }, { 10, \"AF_INET6\" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6, __print_symbolic(REC->state, { TCP_ESTABLISHED, \"TCP_ESTABLISHED\" }, { TCP_SYN_SENT, \"TCP_SYN_SENT\" }, { TCP_SYN_RECV, \"TCP_SYN_RECV\" }, { TCP_FIN_WAIT1, \"TCP_FIN_WAIT1\" }, { TCP_FIN_WAIT2, \"TCP_FIN_WAIT2\" }, { TCP_TIME_WAIT, \"TCP_TIME_WAIT\" }, { TCP_CLOSE, \"TCP_CLOSE\" }, { TCP_CLOSE_WAIT, \"TCP_CLOSE_WAIT\" }, { TCP_LAST_ACK, \"TCP_LAST_ACK\" }, { TCP_LISTEN, \"TCP_LISTEN\" }, { TCP_CLOSING, \"TCP_CLOSING\" }, { TCP_NEW_SYN_RECV, \"TCP_NEW_SYN_RECV\" }), REC->err\n\
    ";
    const SOCK_SEND_LENGTH: &str = "\
        name: sock_send_length\n\
        ID: 2284\n\
        format:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
        \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
        \n\
        \tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;\n\
        \tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;\n\
        \tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;\n\
        \n\
        print fmt: \"sk address = %p, family = %s protocol = %s, length = %d, error = %d, flags = 0x%x\", REC->sk, __print_symbolic(REC->family, { 2, \"AF_INET\" }, { 10, \"AF_INET6\" }), __print_symbolic(REC->protocol, { 6, \"IPPROTO_TCP\" }, { 132, \"IPPROTO_SCTP\" }, { 262, \"IPPROTO_MPTCP\" }), !(REC->flags & 2) ? (REC->ret > 0 ? REC->ret : 0) : 0, REC->ret < 0 ? REC->ret : 0, REC->flags\n\
    ";
    const SCHED_PROCESS_EXEC: &str = "\
        name: sched_process_exec\n\
        ID: 365\n\
        format:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
        \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
        \n\
        \tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\
        \tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n\
        \n\
        print fmt: \"filename=%s pid=%d old_pid=%d\", __get_str(filename), REC->pid, REC->old_pid\n\
    ";

    fn f(name: &str, offset: u32, size: u32, signed: bool) -> Field {
        Field { name: name.to_owned(), offset, size, signed }
    }

    fn common() -> Vec<Field> {
        vec![
            f("common_type", 0, 2, false),
            f("common_flags", 2, 1, false),
            f("common_preempt_count", 3, 1, false),
            f("common_pid", 4, 4, true),
        ]
    }

    #[test]
    fn parse_real_samples() -> Result<(), FormatError> {
        let cases: Vec<(&str, &str, Vec<Field>)> = vec![
            (
                "inet_sock_set_state",
                INET_SOCK_SET_STATE,
                vec![
                    f("skaddr", 8, 8, false),
                    f("oldstate", 16, 4, true),
                    f("newstate", 20, 4, true),
                    f("sport", 24, 2, false),
                    f("dport", 26, 2, false),
                    f("family", 28, 2, false),
                    f("protocol", 30, 2, false),
                    f("saddr", 32, 4, false),
                    f("daddr", 36, 4, false),
                    f("saddr_v6", 40, 16, false),
                    f("daddr_v6", 56, 16, false),
                ],
            ),
            (
                "tcp_retransmit_skb",
                TCP_RETRANSMIT_SKB,
                vec![
                    f("skbaddr", 8, 8, false),
                    f("skaddr", 16, 8, false),
                    f("state", 24, 4, true),
                    f("sport", 28, 2, false),
                    f("dport", 30, 2, false),
                    f("family", 32, 2, false),
                    f("saddr", 34, 4, false),
                    f("daddr", 38, 4, false),
                    f("saddr_v6", 42, 16, false),
                    f("daddr_v6", 58, 16, false),
                    f("err", 76, 4, true),
                ],
            ),
            (
                "sock_send_length",
                SOCK_SEND_LENGTH,
                vec![
                    f("sk", 8, 8, false),
                    f("family", 16, 2, false),
                    f("protocol", 18, 2, false),
                    f("ret", 20, 4, true),
                    f("flags", 24, 4, true),
                ],
            ),
            (
                "sched_process_exec (__data_loc)",
                SCHED_PROCESS_EXEC,
                vec![f("filename", 8, 4, false), f("pid", 12, 4, true), f("old_pid", 16, 4, true)],
            ),
        ];
        for (what, text, specific) in cases {
            let mut want = common();
            want.extend(specific);
            assert_eq!(parse_format(text)?, want, "sample {what}");
        }
        let fields = parse_format(INET_SOCK_SET_STATE)?;
        assert_eq!(field_offset(&fields, "newstate")?, 20);
        assert_eq!(field_offset(&fields, "saddr_v6")?, 40);
        assert_eq!(field_offset(&fields, "common_pid")?, 4);
        assert!(matches!(
            field_offset(&fields, "saddr[4]"),
            Err(FormatError::FieldNotFound { name }) if name == "saddr[4]"
        ));
        assert!(matches!(field_offset(&fields, "nope"), Err(FormatError::FieldNotFound { .. })));
        assert!(matches!(field_offset(&[], "x"), Err(FormatError::FieldNotFound { .. })));
        Ok(())
    }

    #[test]
    fn field_names_and_attributes() {
        // (line after "field:", expected name, offset, size, signed)
        let cases: &[(&str, &str, u32, u32, bool)] = &[
            ("int x;\toffset:1;\tsize:4;\tsigned:1;", "x", 1, 4, true),
            ("unsigned long long bytes;\toffset:8;\tsize:8;\tsigned:0;", "bytes", 8, 8, false),
            ("const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;", "skaddr", 8, 8, false),
            ("struct sock *sk;\toffset:8;\tsize:8;\tsigned:0;", "sk", 8, 8, false),
            ("void*p;\toffset:8;\tsize:8;\tsigned:0;", "p", 8, 8, false),
            ("__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;", "saddr", 32, 4, false),
            ("__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;", "saddr_v6", 40, 16, false),
            ("char comm[TASK_COMM_LEN];\toffset:8;\tsize:16;\tsigned:0;", "comm", 8, 16, false),
            ("char buf[];\toffset:8;\tsize:0;\tsigned:0;", "buf", 8, 0, false),
            ("u32 m[2][3];\toffset:8;\tsize:24;\tsigned:0;", "m", 8, 24, false),
            ("u32 sp [ 4 ] ;\toffset:8;\tsize:16;\tsigned:0;", "sp", 8, 16, false),
            ("__data_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;", "name", 8, 4, false),
            ("__data_loc u8[] buf;\toffset:8;\tsize:4;\tsigned:0;", "buf", 8, 4, false),
            ("__rel_loc char[] msg;\toffset:8;\tsize:4;\tsigned:0;", "msg", 8, 4, false),
            ("int _;\toffset:0;\tsize:4;\tsigned:1;", "_", 0, 4, true),
            ("int x2;\toffset:0;\tsize:4;\tsigned:1;", "x2", 0, 4, true),
            // Attribute order, spacing, extras and duplicates.
            ("int x; size:4; signed:1; offset:12;", "x", 12, 4, true),
            ("int x;offset:1;size:2;signed:0", "x", 1, 2, false),
            ("int x;\toffset: 7 ;\tsize:4;\tsigned:1;\textra:zz;\tjunk;", "x", 7, 4, true),
            ("int x;\toffset:1;\toffset:2;\tsize:4;\tsigned:1;", "x", 1, 4, true),
            ("int x;\toffset:4294967295;\tsize:4294967295;\tsigned:0;", "x", u32::MAX, u32::MAX, false),
            ("int x;\toffset:0001;\tsize:4;\tsigned:0;", "x", 1, 4, false),
            ("int x;\toffset:1;\tsize:4;\tsigned:0;\r", "x", 1, 4, false),
        ];
        for (rest, name, offset, size, signed) in cases {
            let text = format!("format:\n\tfield:{rest}\n");
            match parse_format(&text) {
                Ok(fields) => assert_eq!(fields, vec![f(name, *offset, *size, *signed)], "line {rest:?}"),
                Err(e) => panic!("line {rest:?}: {e}"),
            }
        }
    }

    #[test]
    fn malformed_formats() {
        #[derive(Debug)]
        enum Want {
            Missing(usize, &'static str),
            Invalid(usize, &'static str),
            NoName(usize),
            NoFields,
        }
        use Want::*;
        let cases: &[(&str, &str, Want)] = &[
            ("empty", "", NoFields),
            ("header only", "name: x\nID: 1\nformat:\n\nprint fmt: \"\"\n", NoFields),
            ("not a format file", "hello\nworld", NoFields),
            ("field word elsewhere", "name: field:\nprint fmt: \"field:int x;\"\n", NoFields),
            ("truncated after decl", "format:\n\tfield:int x", Missing(2, "offset")),
            ("truncated after semicolon", "format:\n\tfield:int x;", Missing(2, "offset")),
            ("truncated in offset key", "format:\n\tfield:int x;\toff", Missing(2, "offset")),
            ("truncated offset value", "format:\n\tfield:int x;\toffset:", Invalid(2, "offset")),
            ("truncated before size", "format:\n\tfield:int x;\toffset:8;", Missing(2, "size")),
            ("truncated in size", "format:\n\tfield:int x;\toffset:8;\tsiz", Missing(2, "size")),
            ("truncated before signed", "format:\n\tfield:int x;\toffset:8;\tsize:4;", Missing(2, "signed")),
            ("truncated signed value", "format:\n\tfield:int x;\toffset:8;\tsize:4;\tsigned:", Invalid(2, "signed")),
            (
                "second line bad",
                "\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n\tfield:int b;\tsize:4;\tsigned:1;\n",
                Missing(2, "offset"),
            ),
            ("negative offset", "\tfield:int x;\toffset:-8;\tsize:4;\tsigned:1;", Invalid(1, "offset")),
            ("plus offset", "\tfield:int x;\toffset:+8;\tsize:4;\tsigned:1;", Invalid(1, "offset")),
            ("hex offset", "\tfield:int x;\toffset:0x8;\tsize:4;\tsigned:1;", Invalid(1, "offset")),
            ("offset > u32", "\tfield:int x;\toffset:4294967296;\tsize:4;\tsigned:1;", Invalid(1, "offset")),
            ("huge size", "\tfield:int x;\toffset:0;\tsize:99999999999999999999999999;\tsigned:1;", Invalid(1, "size")),
            ("two numbers", "\tfield:int x;\toffset:1 2;\tsize:4;\tsigned:1;", Invalid(1, "offset")),
            ("signed 2", "\tfield:int x;\toffset:0;\tsize:4;\tsigned:2;", Invalid(1, "signed")),
            ("signed word", "\tfield:int x;\toffset:0;\tsize:4;\tsigned:yes;", Invalid(1, "signed")),
            ("no type", "\tfield:x;\toffset:0;\tsize:4;\tsigned:1;", NoName(1)),
            ("empty decl", "\tfield:;\toffset:0;\tsize:4;\tsigned:1;", NoName(1)),
            ("no identifier", "\tfield:int *;\toffset:0;\tsize:4;\tsigned:1;", NoName(1)),
            ("only array", "\tfield:[4];\toffset:0;\tsize:4;\tsigned:1;", NoName(1)),
            ("unbalanced bracket", "\tfield:int x4];\toffset:0;\tsize:4;\tsigned:1;", NoName(1)),
            ("digit-leading name", "\tfield:int 4x;\toffset:0;\tsize:4;\tsigned:1;", NoName(1)),
            ("non-ascii name", "\tfield:int caf\u{e9};\toffset:0;\tsize:4;\tsigned:1;", NoName(1)),
        ];
        for (what, text, want) in cases {
            match (parse_format(text), want) {
                (Err(FormatError::MissingAttribute { line, attribute }), Missing(l, a))
                    if line == *l && attribute == *a => {}
                (Err(FormatError::InvalidAttribute { line, attribute, .. }), Invalid(l, a))
                    if line == *l && attribute == *a => {}
                (Err(FormatError::MissingFieldName { line, .. }), NoName(l)) if line == *l => {}
                (Err(FormatError::NoFields), NoFields) => {}
                (other, _) => panic!("case {what:?}: got {other:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn error_messages() {
        let long = format!("\tfield:int x;\toffset:{};\tsize:4;\tsigned:1;", "9".repeat(50_000));
        let msg = match parse_format(&long) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("unexpected {v:?}"),
        };
        assert!(msg.starts_with("malformed tracepoint format, line 1: invalid offset value \"999"), "{msg}");
        assert!(msg.len() < 150, "{msg}");
        assert_eq!(
            FormatError::FieldNotFound { name: "x".into() }.to_string(),
            "tracepoint field \"x\" not found in format"
        );
        let not_mounted = FormatError::NotMounted.to_string();
        assert!(not_mounted.contains("mount -t tracefs") && !not_mounted.contains('\n'));
    }

    /// A scratch directory removed on drop.
    use crate::test_support::TempTree;

    #[test]
    fn fake_tracefs_tree() -> Result<(), Box<dyn std::error::Error>> {
        let tree = TempTree::new("tracefs")?;
        let root = tree.path().join("tracing");
        tree.write("tracing/events/sock/inet_sock_set_state/format", INET_SOCK_SET_STATE.as_bytes())?;
        tree.write("tracing/events/bad/utf8/format", b"\tfield:int \xff;\toffset:0;\tsize:4;\tsigned:1;\n")?;
        tree.write("tracing/events/bad/empty/format", b"")?;
        tree.write("tracing/events/bad/truncated/format", b"format:\n\tfield:int x;\toffset:8;\tsi")?;

        let fields = read_format_in(&root, "sock", "inet_sock_set_state")?;
        assert_eq!(field_offset(&fields, "newstate")?, 20);

        assert!(matches!(
            read_format_in(&root, "sock", "nope"),
            Err(FormatError::EventNotFound { category, event, .. }) if category == "sock" && event == "nope"
        ));
        assert!(matches!(read_format_in(&root, "bad", "utf8"), Err(FormatError::NotUtf8 { .. })));
        assert!(matches!(read_format_in(&root, "bad", "empty"), Err(FormatError::NoFields)));
        assert!(matches!(
            read_format_in(&root, "bad", "truncated"),
            Err(FormatError::MissingAttribute { line: 2, attribute: "size" })
        ));
        for (category, event) in [
            ("", "x"),
            ("x", ""),
            ("..", "x"),
            ("sock", ".."),
            (".", "x"),
            ("a/b", "c"),
            ("sock", "../sock/inet_sock_set_state"),
            ("a\0", "b"),
        ] {
            assert!(
                matches!(read_format_in(&root, category, event), Err(FormatError::InvalidName { .. })),
                "{category:?}/{event:?}"
            );
            assert!(
                matches!(read_format(category, event), Err(FormatError::InvalidName { .. })),
                "{category:?}/{event:?}"
            );
        }

        // tracefs_root selection: first candidate with an events directory.
        let a = tree.path().join("a");
        let b = tree.path().join("b");
        let c = tree.path().join("c");
        fs::create_dir_all(&a)?; // no events
        fs::create_dir_all(b.join("events"))?;
        tree.write("c/events", b"not a directory")?;
        assert_eq!(first_with_events([a.as_path(), b.as_path()]), Some(b.clone()));
        assert_eq!(first_with_events([c.as_path(), root.as_path(), b.as_path()]), Some(root.clone()));
        assert_eq!(first_with_events([a.as_path(), c.as_path()]), None);
        assert_eq!(first_with_events(std::iter::empty()), None);
        Ok(())
    }

    #[test]
    fn real_tracefs_formats() -> Result<(), FormatError> {
        let Some(root) = tracefs_root() else {
            panic!("tracefs is not mounted at /sys/kernel/tracing (cargo xtask setup mounts it)");
        };
        eprintln!("tracefs found at {}", root.display());
        // (category, event, [(field, size, signed)]) — sizes assume a 64-bit kernel.
        type Expected = &'static [(&'static str, u32, bool)];
        let cases: &[(&str, &str, Expected)] = &[
            (
                "sock",
                "inet_sock_set_state",
                &[
                    ("skaddr", 8, false),
                    ("oldstate", 4, true),
                    ("newstate", 4, true),
                    ("sport", 2, false),
                    ("dport", 2, false),
                    ("family", 2, false),
                    ("protocol", 2, false),
                    ("saddr", 4, false),
                    ("daddr", 4, false),
                    ("saddr_v6", 16, false),
                    ("daddr_v6", 16, false),
                ],
            ),
            (
                "tcp",
                "tcp_retransmit_skb",
                &[
                    ("skbaddr", 8, false),
                    ("skaddr", 8, false),
                    ("state", 4, true),
                    ("sport", 2, false),
                    ("dport", 2, false),
                    ("saddr", 4, false),
                    ("daddr", 4, false),
                ],
            ),
            (
                "sock",
                "sock_send_length",
                &[("sk", 8, false), ("family", 2, false), ("protocol", 2, false), ("ret", 4, true)],
            ),
        ];
        for (category, event, expected) in cases {
            let fields = read_format(category, event)?;
            assert_eq!(field_offset(&fields, "common_type")?, 0, "{category}/{event}");
            for (name, size, signed) in *expected {
                let field = fields.iter().find(|f| f.name == *name);
                let Some(field) = field else {
                    panic!("{category}/{event}: no field {name} in {fields:?}");
                };
                assert_eq!((field.size, field.signed), (*size, *signed), "{category}/{event} {name}");
                assert!(field.offset >= 8, "{category}/{event} {name} overlaps the common header");
            }
            eprintln!("{category}/{event}: {} fields ok", fields.len());
        }
        Ok(())
    }
}
