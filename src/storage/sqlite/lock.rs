//! One daemon per database file (SPEC §13, first paragraph). Two processes on
//! one SQLite file would both run actors over the same orders, and every
//! queued shipment could be created twice; so the file is locked for the life
//! of the process (an exclusive `flock` on `<database>.lock`, released by the
//! kernel if the process dies), and a second start is refused with the holder's
//! pid, which the lock file records.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::StorageError;

/// The lock, held while this value lives.
#[derive(Debug)]
pub(super) struct DatabaseLock {
    _file: File,
}

/// The lock file of the database at `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl DatabaseLock {
    /// Takes the lock of `db` or says who has it.
    pub(super) fn acquire(db: &Path) -> Result<Self, StorageError> {
        let path = lock_path(db);
        let locked = |source| StorageError::Lock {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(locked)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StorageError::InUse {
                    database: db.to_path_buf(),
                    lock: path.clone(),
                    holder: holder.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(locked(e)),
        }
        file.set_len(0).map_err(locked)?;
        file.seek(SeekFrom::Start(0)).map_err(locked)?;
        writeln!(file, "{}", std::process::id()).map_err(locked)?;
        file.sync_all().map_err(locked)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        let first = DatabaseLock::acquire(&db).unwrap();
        match DatabaseLock::acquire(&db) {
            Err(StorageError::InUse { lock, holder, .. }) => {
                assert_eq!(lock, dir.path().join("d.db.lock"));
                assert_eq!(holder, Some(std::process::id()));
            }
            other => panic!("{other:?}"),
        }
        drop(first);
        assert!(
            DatabaseLock::acquire(&db).is_ok(),
            "released with its holder"
        );
    }
}
