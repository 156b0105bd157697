//! Property tests for every parser of kernel or /proc data: whatever bytes
//! the kernel (or a hostile process name) puts there, parsing returns a value
//! or an error — it never panics — and well-formed input round-trips.

use proptest::prelude::*;

use crate::{cli::parse_duration, sockets::iter, target::procfs};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn status_parser_never_panics(text in "(?s).{0,400}") {
        let _ = procfs::parse_status(&text);
    }

    #[test]
    fn status_parser_reads_what_it_is_given(
        name in "[a-zA-Z0-9_. -]{1,15}",
        tgid in 1u32..4_000_000,
        rss_kb in 0u64..(1 << 40),
        anon_kb in 0u64..(1 << 40),
        threads in 1u32..100_000,
    ) {
        let text = format!(
            "Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{tgid}\nPid:\t{tgid}\n\
             VmRSS:\t{rss_kb} kB\nRssAnon:\t{anon_kb} kB\nThreads:\t{threads}\n"
        );
        let st = procfs::parse_status(&text).expect("well-formed status parses");
        prop_assert_eq!(st.tgid, tgid);
        prop_assert_eq!(st.vm_rss_bytes, Some(rss_kb * 1024));
        prop_assert_eq!(st.rss_anon_bytes, Some(anon_kb * 1024));
        prop_assert_eq!(st.threads, threads);
    }

    #[test]
    fn stat_flags_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = procfs::parse_stat_flags(&bytes);
    }

    #[test]
    fn socket_links_parse_only_sockets(inode in any::<u64>(), junk in ".{0,40}") {
        prop_assert_eq!(procfs::socket_inode_from_link(format!("socket:[{inode}]")), Some(inode));
        let _ = procfs::socket_inode_from_link(&junk);
        prop_assert_eq!(procfs::socket_inode_from_link(format!("pipe:[{inode}]")), None);
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
