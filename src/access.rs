//! Who may open the files the runtime publishes (the mask ring and the command socket).
//!
//! Both are created **owner-only** (`0600`) by default: another account can neither read the masks
//! nor send commands. A consumer running as a different user is admitted by a group: set
//! [`Access::group`] to a group both accounts belong to and [`Access::mode`] to e.g. `0o660`
//! (socket clients need write permission to connect, ring readers only read permission).
//!
//! The mode is applied with an explicit `chmod` after creation, so the process umask does not widen
//! or narrow it; the file is first created with at most `0600`, so there is no window in which it is
//! more open than requested.

use std::path::Path;

use crate::{Error, Result};

/// Permission bits and optional group for a published file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Permission bits (`0o600` by default). Only the low 9 bits (rwx for user, group, other) are
    /// accepted; set-id and sticky bits are refused.
    pub mode: u32,
    /// Group id to hand the file to (`None`: the process's group). The process must be a member.
    pub group: Option<u32>,
}

/// The default permission bits: read and write for the owner only.
pub const OWNER_ONLY: u32 = 0o600;

impl Default for Access {
    fn default() -> Self {
        Access {
            mode: OWNER_ONLY,
            group: None,
        }
    }
}

impl Access {
    /// Checks the mode for bits beyond `0o777`.
    pub fn validate(&self) -> Result<()> {
        if self.mode & !0o777 != 0 {
            return Err(Error::Config(format!(
                "file mode {:o} has bits beyond 0777 (set-id and sticky bits are not allowed)",
                self.mode
            )));
        }
        Ok(())
    }

    /// Applies the group, then the mode, to the open file `file` (created at `path`).
    pub fn apply_to_file(&self, file: &std::fs::File, path: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.validate()?;
        if let Some(gid) = self.group {
            std::os::unix::fs::fchown(file, None, Some(gid)).map_err(|e| Error::io(path, e))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(self.mode))
            .map_err(|e| Error::io(path, e))
    }

    /// Applies the group, then the mode, to the file at `path` (used for sockets, which have no
    /// open file handle to change).
    pub fn apply_to_path(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.validate()?;
        if let Some(gid) = self.group {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| Error::io(path, e))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode))
            .map_err(|e| Error::io(path, e))
    }
}

/// Looks up a group by name (or accepts a decimal id) in `/etc/group`, for a `--*-group` option.
pub fn resolve_group(name_or_id: &str) -> Result<u32> {
    if let Ok(id) = name_or_id.parse::<u32>() {
        return Ok(id);
    }
    let path = Path::new("/etc/group");
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let _pw = f.next()?;
            let gid = f.next()?.parse::<u32>().ok()?;
            (name == name_or_id).then_some(gid)
        })
        .next()
        .ok_or_else(|| Error::Config(format!("unknown group {name_or_id:?} (not in /etc/group)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_owner_only_and_bad_modes_are_refused() {
        assert_eq!(Access::default().mode, 0o600);
        assert!(Access::default().validate().is_ok());
        assert!(Access {
            mode: 0o4600,
            group: None
        }
        .validate()
        .is_err());
    }

    #[test]
    fn groups_resolve_by_id_and_name() {
        assert_eq!(resolve_group("1234").unwrap(), 1234);
        // Every Unix system has group 0 (named "root" on Linux, "wheel" elsewhere).
        if let Ok(g) = resolve_group("root") {
            assert_eq!(g, 0);
        }
        assert!(resolve_group("no-such-group-referdino").is_err());
    }
}
