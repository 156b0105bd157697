//! Property tests for every parser of kernel or /proc data: whatever bytes
//! the kernel (or a hostile process name) puts there, parsing returns a value
//! or an error — it never panics — and well-formed input round-trips.

use proptest::prelude::*;

use crate::{
    cli::parse_duration,
    probes::{kallsyms, tracefs},
    proc,
    sockets::iter,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn socket_links_parse_only_sockets(inode in any::<u64>(), junk in proptest::collection::vec(any::<u8>(), 0..40)) {
        prop_assert_eq!(proc::socket_inode_from_link(format!("socket:[{inode}]").as_bytes()), Some(inode));
        let _ = proc::socket_inode_from_link(&junk);
        prop_assert_eq!(proc::socket_inode_from_link(format!("pipe:[{inode}]").as_bytes()), None);
    }

    #[test]
    fn kallsyms_never_panics_and_finds_planted_symbols(
        text in "(?s).{0,400}",
        addr in 1u64..,
        kind in "[tTdDbBrR]",
    ) {
        let _ = kallsyms::parse_symbol(&text, "tcp_write_timer");
        let planted = format!("{text}\n{addr:016x} {kind} tcp_write_timer\n");
        // Junk before it may contain the name itself; only assert when not.
        if !text.contains("tcp_write_timer") {
            prop_assert_eq!(kallsyms::parse_symbol(&planted, "tcp_write_timer").ok(), Some(addr));
        }
    }

    #[test]
    fn tracefs_formats_never_panic(text in "(?s).{0,600}") {
        let _ = tracefs::parse_format(&text);
    }

    #[test]
    fn tracefs_fields_round_trip(offset in 0u32..4096, size in 1u32..64, name in "[a-z_][a-z0-9_]{0,20}") {
        let text = format!(
            "name: x\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\
             \tfield:const void * {name};\toffset:{offset};\tsize:{size};\tsigned:0;\n\nprint fmt: \"\"\n"
        );
        let fields = tracefs::parse_format(&text).expect("well-formed format parses");
        prop_assert_eq!(tracefs::field_offset(&fields, &name).ok(), Some(offset));
    }

    #[test]
    fn iterator_output_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1000)) {
        match iter::decode(&bytes) {
            Ok(records) => prop_assert_eq!(records.len() * size_of::<observer_common::SockRecord>(), bytes.len()),
            Err(_) => prop_assert!(bytes.len() % size_of::<observer_common::SockRecord>() != 0),
        }
    }

    #[test]
    fn durations_never_panic(text in ".{0,30}") {
        let _ = parse_duration(&text);
    }
}
