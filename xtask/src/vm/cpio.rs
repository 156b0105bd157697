//! The `newc` cpio format the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst), written
//! directly so the guest image needs no `cpio` tool and no staging directory.

use std::io::{self, Write};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { path: String },
    File { path: String, mode: u32, data: Vec<u8> },
    CharDev { path: String, mode: u32, major: u32, minor: u32 },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Writes `entries` and the trailer. Parent directories must come first.
pub fn write<W: Write>(out: &mut W, entries: &[Entry]) -> io::Result<()> {
    for (ino, e) in (1..).zip(entries) {
        let (path, mode, data, rdev): (&str, u32, &[u8], (u32, u32)) = match e {
            Entry::Dir { path } => (path, S_IFDIR | 0o755, &[], (0, 0)),
            Entry::File { path, mode, data } => (path, S_IFREG | mode, data, (0, 0)),
            Entry::CharDev { path, mode, major, minor } => (path, S_IFCHR | mode, &[], (*major, *minor)),
        };
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        record(out, ino, mode, nlink, rdev, path, data)?;
    }
    record(out, 0, 0, 1, (0, 0), "TRAILER!!!", &[])
}

fn record<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let size = u32::try_from(data.len()).map_err(|_| io::Error::other(format!("{name}: larger than 4 GiB")))?;
    let namesize = name.len() as u32 + 1;
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, header.len() + name.len() + 1)?;
    out.write_all(data)?;
    pad(out, data.len())
}

/// Header-plus-name and data each end on a 4-byte boundary.
fn pad<W: Write>(out: &mut W, len: usize) -> io::Result<()> {
    out.write_all(&[0; 3][..(4 - len % 4) % 4])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the archive back: (name, mode, rdevmajor, rdevminor, data) per record.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).expect("ascii"), 16).expect("hex");
        let start = b.len();
        loop {
            assert_eq!(&b[..6], b"070701", "magic at offset {}", start - b.len());
            let f = |i: usize| hex(&b[6 + 8 * i..14 + 8 * i]);
            let (mode, size, rmaj, rmin, namesize) = (f(1), f(6) as usize, f(9), f(10), f(11) as usize);
            let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).expect("utf8");
            assert_eq!(b[110 + namesize - 1], 0, "name ends in NUL");
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = b[data_at..data_at + size].to_vec();
            b = &b[(data_at + size).next_multiple_of(4)..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty(), "bytes after the trailer");
                return out;
            }
            out.push((name, mode, rmaj, rmin, data));
        }
    }

    #[test]
    fn round_trips_every_kind_with_alignment() {
        let entries = vec![
            Entry::Dir { path: "dev".into() },
            Entry::CharDev { path: "dev/console".into(), mode: 0o600, major: 5, minor: 1 },
            Entry::File { path: "init".into(), mode: 0o755, data: b"#!/bin/sh\n".to_vec() },
            Entry::File { path: "a".into(), mode: 0o644, data: vec![7; 5] },
            Entry::File { path: "empty".into(), mode: 0o644, data: Vec::new() },
        ];
        let mut buf = Vec::new();
        write(&mut buf, &entries).expect("write to memory");
        assert_eq!(buf.len() % 4, 0);
        let back = parse(&buf);
        assert_eq!(back.len(), 5);
        assert_eq!(back[0], ("dev".into(), 0o040755, 0, 0, vec![]));
        assert_eq!(back[1], ("dev/console".into(), 0o020600, 5, 1, vec![]));
        assert_eq!(back[2], ("init".into(), 0o100755, 0, 0, b"#!/bin/sh\n".to_vec()));
        assert_eq!(back[3].4, vec![7; 5]);
        assert_eq!(back[4].4, Vec::<u8>::new());
    }
}
