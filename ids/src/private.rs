//! Private files and folders: everything the broker keeps on disk (the data folder, the SQLite
//! store, audit segments and checkpoints, session captures, SIEM cursors) is readable by the broker's
//! own user only, whatever the umask it was started under. Folders are 0700, files 0600.
//!
//! Every crate that writes under the data folder creates through here, so no file appears with the
//! process umask's looser default even for a moment.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every folder the broker creates.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file the broker creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and any missing parents as 0700 folders. An existing folder is left as it is,
/// except the last one, which is set to 0700 (the broker owns the folders it is pointed at).
pub fn dir_all(path: &Path) -> io::Result<()> {
    create_missing(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

fn create_missing(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_missing(parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Open options that create files as 0600 (the umask can only take bits away from that).
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates (or truncates) `path` as a 0600 file for writing.
pub fn create(path: &Path) -> io::Result<std::fs::File> {
    file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Makes sure `path` exists as a 0600 file without touching its contents (for files another library
/// creates, such as SQLite's, which then takes the same mode for its journal files).
pub fn touch(path: &Path) -> io::Result<()> {
    file_options().append(true).create(true).open(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn folders_and_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let deep = root.join("a/b/c");
        dir_all(&deep).unwrap();
        for dir in [root.join("a"), root.join("a/b"), deep.clone()] {
            assert_eq!(mode(&dir), DIR_MODE, "{}", dir.display());
        }
        // An existing folder given to the broker is tightened.
        std::fs::set_permissions(&deep, Permissions::from_mode(0o755)).unwrap();
        dir_all(&deep).unwrap();
        assert_eq!(mode(&deep), DIR_MODE);

        let file = deep.join("f");
        std::io::Write::write_all(&mut create(&file).unwrap(), b"x").unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        touch(&file).unwrap();
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"x",
            "touch keeps the contents"
        );
    }
}
