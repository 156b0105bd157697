//! Property tests for every parser of kernel or /proc data: whatever bytes
//! the kernel (or a hostile process name) puts there, parsing returns a value
//! or an error — it never panics — and well-formed input round-trips.

use proptest::prelude::*;

use crate::{cli::parse_duration, proc, sockets::iter};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn socket_links_parse_only_sockets(inode in any::<u64>(), junk in proptest::collection::vec(any::<u8>(), 0..40)) {
        prop_assert_eq!(proc::socket_inode_from_link(format!("socket:[{inode}]").as_bytes()), Some(inode));
        let _ = proc::socket_inode_from_link(&junk);
        prop_assert_eq!(proc::socket_inode_from_link(format!("pipe:[{inode}]").as_bytes()), None);
    }

    #[test]
    fn iterator_output_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1000)) {
        match iter::decode::<observer_common::SockRecord>(&bytes) {
            Ok(records) => prop_assert_eq!(records.len() * size_of::<observer_common::SockRecord>(), bytes.len()),
            Err(_) => prop_assert!(bytes.len() % size_of::<observer_common::SockRecord>() != 0),
        }
    }

    #[test]
    fn durations_never_panic(text in ".{0,30}") {
        let _ = parse_duration(&text);
    }
}
