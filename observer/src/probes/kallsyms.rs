//! Kernel symbol addresses from `/proc/kallsyms`.
//!
//! Each line is `<hex address> <type> <name>`, optionally followed by
//! `\t[<module>]`, e.g. `ffffffff8202c9e0 t tcp_write_timer`.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Where the kernel exposes its symbol table.
pub const KALLSYMS_PATH: &str = "/proc/kallsyms";

/// Longest input excerpt quoted in an error message.
const MAX_QUOTED: usize = 64;

/// Errors from looking up a kernel symbol. `Display` is a one-line message
/// meant for operators.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    /// No line carries exactly this symbol name.
    #[error("kernel symbol {symbol:?} not found in /proc/kallsyms")]
    NotFound { symbol: String },
    /// The symbol exists but its address reads as zero: the kernel hides
    /// addresses from this reader.
    #[error(
        "address of kernel symbol {symbol:?} is hidden (reads as 0) in /proc/kallsyms: \
         run as root or with CAP_SYSLOG, and make sure sysctl kernel.kptr_restrict is 0 or 1 \
         (2 hides addresses even from root)"
    )]
    Hidden { symbol: String },
    /// The line naming the symbol has an address that is not 64-bit hex.
    #[error("malformed kallsyms line {line}: invalid address {value:?}")]
    InvalidAddress {
        /// 1-based line number.
        line: usize,
        /// The offending text, cut to a few dozen characters.
        value: String,
    },
    /// `/proc/kallsyms` could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Finds the address of symbol `name` in the text of `/proc/kallsyms`.
///
/// The name must match exactly (`tcp_write_timer` does not match
/// `tcp_write_timer_handler`); the first matching line wins, whatever its
/// module. Lines too short to hold a name are skipped. An all-zero address
/// is reported as [`KallsymsError::Hidden`] (that is what `kptr_restrict`
/// produces; genuinely-zero absolute symbols are not something we look up).
#[cfg_attr(not(test), allow(dead_code))] // the pure form, for tests and fuzzing
pub fn parse_symbol(text: &str, name: &str) -> Result<u64, KallsymsError> {
    for (index, line) in text.split('\n').enumerate() {
        if let Some(result) = match_line(line.as_bytes(), name.as_bytes(), index + 1) {
            return result;
        }
    }
    Err(not_found(name))
}

/// Looks up symbol `name` in `/proc/kallsyms`, reading it line by line and
/// stopping at the first match. Same matching rules as [`parse_symbol`].
pub fn lookup(name: &str) -> Result<u64, KallsymsError> {
    lookup_in(Path::new(KALLSYMS_PATH), name)
}

fn lookup_in(path: &Path, name: &str) -> Result<u64, KallsymsError> {
    let io_err = |source| KallsymsError::Io { path: path.to_path_buf(), source };
    let mut reader = BufReader::with_capacity(64 * 1024, File::open(path).map_err(io_err)?);
    let mut line = Vec::with_capacity(256);
    let mut line_no = 0usize;
    loop {
        line.clear();
        // Bytes, not `String`: a stray non-UTF-8 byte must not abort the scan.
        if reader.read_until(b'\n', &mut line).map_err(io_err)? == 0 {
            return Err(not_found(name));
        }
        line_no += 1;
        if let Some(result) = match_line(&line, name.as_bytes(), line_no) {
            return result;
        }
    }
}

/// `None` if the line is not about `name` (including lines too short to be
/// about anything); otherwise the parsed address or the reason it is unusable.
fn match_line(line: &[u8], name: &[u8], line_no: usize) -> Option<Result<u64, KallsymsError>> {
    let mut tokens = line.split(|b| b.is_ascii_whitespace()).filter(|t| !t.is_empty());
    let address = tokens.next()?;
    let _symbol_type = tokens.next()?;
    if tokens.next()? != name {
        return None;
    }
    Some(match parse_hex_u64(address) {
        None => Err(KallsymsError::InvalidAddress { line: line_no, value: quote(address) }),
        Some(0) => Err(KallsymsError::Hidden { symbol: String::from_utf8_lossy(name).into_owned() }),
        Some(address) => Ok(address),
    })
}

/// Strict hex: at least one digit, only hex digits (no `0x`, no sign), fits
/// in 64 bits.
fn parse_hex_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let digit = char::from(b).to_digit(16)?;
        acc.checked_mul(16)?.checked_add(u64::from(digit))
    })
}

fn not_found(name: &str) -> KallsymsError {
    KallsymsError::NotFound { symbol: name.to_owned() }
}

fn quote(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}...", text.get(..cut).unwrap_or_default()),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff8202c9c0 t tcp_write_timer_handler
ffffffff8202c9e0 t tcp_write_timer
ffffffff8202ca00 t tcp_keepalive_timer
ffffffff8202cb00 T tcp_retransmit_timer
ffffffffc0201000 t ftrace_trampoline\t[__builtin__ftrace]
ffffffffc0a01230 t tcp_write_timer\t[some_module]
ffffffffc0a01300 t mod_only_sym\t[some_module]
ffffffff82000000 d tcp_write_timer
";

    #[derive(Debug)]
    enum Want {
        Addr(u64),
        NotFound,
        Hidden,
        InvalidAddress(usize),
    }

    fn check(what: &str, got: Result<u64, KallsymsError>, want: &Want) {
        match (got, want) {
            (Ok(a), Want::Addr(w)) => assert_eq!(a, *w, "case {what:?}"),
            (Err(KallsymsError::NotFound { .. }), Want::NotFound) => {}
            (Err(KallsymsError::Hidden { .. }), Want::Hidden) => {}
            (Err(KallsymsError::InvalidAddress { line, .. }), Want::InvalidAddress(w)) if line == *w => {}
            (other, _) => panic!("case {what:?}: got {other:?}, want {want:?}"),
        }
    }

    #[test]
    fn parse_symbol_table() {
        use Want::*;
        let cases: &[(&str, &str, &str, Want)] = &[
            ("first exact match", SAMPLE, "tcp_write_timer", Addr(0xffff_ffff_8202_c9e0)),
            ("longer name", SAMPLE, "tcp_write_timer_handler", Addr(0xffff_ffff_8202_c9c0)),
            ("module symbol", SAMPLE, "mod_only_sym", Addr(0xffff_ffff_c0a0_1300)),
            ("module symbol 2", SAMPLE, "ftrace_trampoline", Addr(0xffff_ffff_c020_1000)),
            ("first line", SAMPLE, "_stext", Addr(0xffff_ffff_8100_0000)),
            ("prefix is not a match", SAMPLE, "tcp_write", NotFound),
            ("suffix is not a match", SAMPLE, "write_timer", NotFound),
            ("case sensitive", SAMPLE, "TCP_WRITE_TIMER", NotFound),
            ("module name is not a symbol", SAMPLE, "[some_module]", NotFound),
            ("type is not a symbol", SAMPLE, "t", NotFound),
            ("address is not a symbol", SAMPLE, "ffffffff81000000", NotFound),
            ("empty name", SAMPLE, "", NotFound),
            ("name with blank", SAMPLE, "tcp_write_timer ", NotFound),
            ("empty text", "", "x", NotFound),
            ("blank lines", "\n\n   \n\t\n", "x", NotFound),
            ("no trailing newline", "ffffffff81000010 T x", "x", Addr(0xffff_ffff_8100_0010)),
            ("CRLF", "ffffffff81000010 T x\r\n", "x", Addr(0xffff_ffff_8100_0010)),
            ("extra blanks", "  ffffffff81000010   T\t\tx  \t[m]  \n", "x", Addr(0xffff_ffff_8100_0010)),
            ("uppercase hex", "FFFFFFFF8100ABCD T x\n", "x", Addr(0xffff_ffff_8100_abcd)),
            ("short address", "10 T x\n", "x", Addr(0x10)),
            ("max address", "ffffffffffffffff T x\n", "x", Addr(u64::MAX)),
            ("leading zeros beyond 16 digits", "00000000000000000001 T x\n", "x", Addr(1)),
            ("hidden", "0000000000000000 T _stext\n0000000000000000 t x\n", "x", Hidden),
            ("hidden short zero", "0 t x\n", "x", Hidden),
            ("hidden but absent", "0000000000000000 t y\n", "x", NotFound),
            (
                "truncated lines skipped",
                "ffffffff81000000\nffffffff81000000 t\nffffffff81000020 t x\n",
                "x",
                Addr(0xffff_ffff_8100_0020),
            ),
            ("truncated before name", "ffffffff81000000 t", "x", NotFound),
            ("truncated name", "ffffffff81000000 t tcp_wri", "tcp_write_timer", NotFound),
            ("bad hex", "a\nfffffffg81000000 t x\n", "x", InvalidAddress(2)),
            ("0x prefix", "0xffffffff81000000 t x\n", "x", InvalidAddress(1)),
            ("sign", "+ffffffff81000000 t x\n", "x", InvalidAddress(1)),
            ("17 significant digits", "1ffffffffffffffff t x\n", "x", InvalidAddress(1)),
            ("huge address", "ffffffffffffffffffffffffffffffffffffffff t x\n", "x", InvalidAddress(1)),
            ("bad address on other line ignored", "zzzz t y\nffffffff81000030 t x\n", "x", Addr(0xffff_ffff_8100_0030)),
            ("non-ascii", "ffffffff81000040 t caf\u{e9}\n", "caf\u{e9}", Addr(0xffff_ffff_8100_0040)),
            ("non-ascii address", "ffff\u{e9}\u{e9} t x\n", "x", InvalidAddress(1)),
        ];
        for (what, text, name, want) in cases {
            check(what, parse_symbol(text, name), want);
        }
    }

    #[test]
    fn error_messages() {
        let hidden = KallsymsError::Hidden { symbol: "tcp_write_timer".into() }.to_string();
        assert!(hidden.starts_with("address of kernel symbol \"tcp_write_timer\" is hidden"), "{hidden}");
        assert!(hidden.contains("CAP_SYSLOG") && hidden.contains("kernel.kptr_restrict"), "{hidden}");
        assert!(!hidden.contains('\n'));
        assert_eq!(
            KallsymsError::NotFound { symbol: "x".into() }.to_string(),
            "kernel symbol \"x\" not found in /proc/kallsyms"
        );
        let long = format!("{} t x", "z".repeat(10_000));
        match parse_symbol(&long, "x") {
            Err(e @ KallsymsError::InvalidAddress { .. }) => {
                let msg = e.to_string();
                assert!(msg.len() < 150, "{msg}");
                assert!(msg.starts_with("malformed kallsyms line 1: invalid address \"zzz"), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &[u8]) -> io::Result<Self> {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("observer-kallsyms-{}-{n}", std::process::id()));
            std::fs::write(&path, contents)?;
            Ok(Self(path))
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn lookup_in_file_table() -> Result<(), Box<dyn std::error::Error>> {
        use Want::*;
        let mut non_utf8 = b"ffffffff81000000 t \xff\xfe\xfd\n".to_vec();
        non_utf8.extend_from_slice(b"ffffffff81000050 t x\t[\xffmod]\n");
        let mut big = Vec::new();
        for i in 0..200_000u64 {
            big.extend_from_slice(format!("{:016x} t filler_{i}\n", 0xffff_ffff_8100_0000u64 + i).as_bytes());
        }
        big.extend_from_slice(b"ffffffff89999999 T needle\n");
        let cases: Vec<(&str, Vec<u8>, &str, Want)> = vec![
            ("sample", SAMPLE.as_bytes().to_vec(), "tcp_write_timer", Addr(0xffff_ffff_8202_c9e0)),
            ("missing", SAMPLE.as_bytes().to_vec(), "nope", NotFound),
            ("empty file", Vec::new(), "x", NotFound),
            ("non-utf8 lines", non_utf8, "x", Addr(0xffff_ffff_8100_0050)),
            ("hidden", b"0000000000000000 T _stext\n0000000000000000 t x\n".to_vec(), "x", Hidden),
            ("bad address line number", b"\n\nnothex t x\n".to_vec(), "x", InvalidAddress(3)),
            ("no final newline", b"ffffffff81000060 t x".to_vec(), "x", Addr(0xffff_ffff_8100_0060)),
            ("large file", big, "needle", Addr(0xffff_ffff_8999_9999)),
        ];
        for (what, contents, name, want) in &cases {
            let file = TempFile::new(contents)?;
            check(what, lookup_in(&file.0, name), want);
            if let Ok(text) = std::str::from_utf8(contents) {
                check(what, parse_symbol(text, name), want);
            }
        }
        match lookup_in(Path::new("/nonexistent/kallsyms"), "x") {
            Err(e @ KallsymsError::Io { .. }) => {
                assert!(e.to_string().starts_with("cannot read /nonexistent/kallsyms: "), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn lookup_real_kallsyms() {
        match lookup("tcp_write_timer") {
            Ok(address) => {
                // Kernel text lives in the top half of the address space.
                assert!(address >= 0x8000_0000_0000_0000, "{address:#x}");
                match lookup("tcp_write_timer_handler") {
                    Ok(other) => assert_ne!(address, other),
                    Err(e) => eprintln!("note: {e}"),
                }
            }
            // Root sees the addresses on the kernels the tests run on.
            Err(e) => panic!("reading tcp_write_timer from /proc/kallsyms as root: {e}"),
        }
        assert!(matches!(
            lookup("observer_surely_no_such_symbol"),
            Err(KallsymsError::NotFound { .. } | KallsymsError::Io { .. })
        ));
    }
}
