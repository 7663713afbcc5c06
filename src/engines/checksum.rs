//! File checksums that tie an engine directory together: the manifest records each ONNX file's size and
//! CRC-32, the object set records the text engine it was exported with, and a plan's sidecar records
//! the ONNX it was built from. Loading checks them, so a file copied in from another export (same
//! shapes, other weights), a damaged copy, or plans left over from before a re-export are refused
//! instead of producing wrong masks.
//!
//! CRC-32 detects accidents, not tampering: nothing here is meant to resist a crafted file.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// CRC-32 (IEEE) of `bytes` as eight lowercase hex digits, the form manifests and sidecars record.
pub fn crc32_of(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// Size and CRC-32 of the file at `path`, read in 1 MiB blocks (engines can be hundreds of MiB).
pub fn file_crc32(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, format!("{:08x}", h.finalize())))
}

/// Fails unless the file at `path` is `bytes` long and, when `crc32` is recorded (manifests written
/// before checksums were added have none), has that CRC-32. `listed_in` names the manifest for the
/// message.
pub fn verify_file(path: &Path, bytes: u64, crc32: Option<&str>, listed_in: &Path) -> Result<()> {
    let mismatch = |found: String| {
        Error::Config(format!(
            "{} is not the file {} lists ({found}): it comes from another export or is a damaged \
             copy; keep an export's files together, or export again",
            path.display(),
            listed_in.display()
        ))
    };
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len != bytes {
        return Err(mismatch(format!("{len} bytes, {bytes} expected")));
    }
    let Some(want) = crc32 else {
        return Ok(());
    };
    let (_, got) = file_crc32(path)?;
    if !got.eq_ignore_ascii_case(want) {
        return Err(mismatch(format!("CRC-32 {got}, {want} expected")));
    }
    Ok(())
}

/// Fails when a plan's sidecar says it was built from an ONNX file other than the one the manifest
/// lists now (`built_from` and `listed` both known and different): the engines were exported again
/// after the plans were built, so the plans hold the old weights or shapes.
pub fn check_plan_source(
    plan: &Path,
    built_from: Option<&str>,
    listed: Option<&str>,
) -> Result<()> {
    match (built_from, listed) {
        (Some(b), Some(l)) if !b.eq_ignore_ascii_case(l) => Err(Error::Config(format!(
            "{} was built from an ONNX file with CRC-32 {b}, but the manifest now lists {l}: the \
             engines were exported again after this plan was built; rebuild the plans with \
             `referdino build`",
            plan.display()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_ieee_check_value() {
        // The standard check value of CRC-32/ISO-HDLC for the ASCII digits 1..9.
        assert_eq!(crc32_of(b"123456789"), "cbf43926");
    }

    #[test]
    fn a_file_is_checked_by_size_then_crc() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("text.onnx");
        let listed = dir.path().join("manifest.json");
        std::fs::write(&p, vec![7u8; 3 << 20]).unwrap();
        let (len, crc) = file_crc32(&p).unwrap();
        assert_eq!(len, 3 << 20);
        assert_eq!(crc, crc32_of(&vec![7u8; 3 << 20]));
        verify_file(&p, len, Some(&crc), &listed).unwrap();
        verify_file(&p, len, Some(&crc.to_uppercase()), &listed).unwrap();
        verify_file(&p, len, None, &listed).unwrap();
        let e = verify_file(&p, len + 1, None, &listed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bytes") && e.contains("another export"), "{e}");
        // Same size, one byte changed: only the CRC tells.
        let mut other = vec![7u8; 3 << 20];
        other[12345] = 8;
        std::fs::write(&p, &other).unwrap();
        let e = verify_file(&p, len, Some(&crc), &listed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CRC-32") && e.contains("manifest.json"), "{e}");
        let e = verify_file(&dir.path().join("gone.onnx"), 1, None, &listed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gone.onnx"), "{e}");
    }

    #[test]
    fn a_plan_from_an_older_export_is_refused() {
        let plan = Path::new("frame.plan");
        check_plan_source(plan, Some("0000abcd"), Some("0000ABCD")).unwrap();
        check_plan_source(plan, None, Some("0000abcd")).unwrap();
        check_plan_source(plan, Some("0000abcd"), None).unwrap();
        let e = check_plan_source(plan, Some("0000abcd"), Some("12345678"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("frame.plan") && e.contains("referdino build"),
            "{e}"
        );
    }
}
