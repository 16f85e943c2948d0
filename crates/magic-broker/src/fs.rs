//! `fs:temp` bookkeeping: the per-execution temp dir when no sandbox tmpfs provides one.
//!
//! Owns: creating a private (0700) directory per execution under `DATA_DIR/tmp`, measuring
//! its use against the declared size (E3003), and removing it afterwards. The sandbox
//! replaces this with a size-limited tmpfs. Must never: follow symlinks while measuring or
//! removing, or leave the directory behind once the guard is gone.

use std::path::{Path, PathBuf};

use magic_contract::ErrorCode;

use crate::BrokerError;

/// Creates execution temp dirs under one base directory.
pub(crate) struct FsModule {
    base: PathBuf,
}

impl FsModule {
    /// Temp dirs under `base`.
    pub fn new(base: PathBuf) -> Self {
        FsModule { base }
    }

    /// Create the temp dir of execution `request_id` with a `budget` of bytes.
    pub fn create(&self, request_id: &str, budget: u64) -> std::io::Result<ExecutionTempDir> {
        std::fs::create_dir_all(&self.base)?;
        let safe: String = request_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
            .take(64)
            .collect();
        let path = self
            .base
            .join(format!("exec-{safe}-{}", uuid::Uuid::new_v4().simple()));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&path)?;
        Ok(ExecutionTempDir {
            path,
            budget,
            removed: false,
        })
    }
}

/// One execution's temp dir; removed on drop.
#[derive(Debug)]
pub struct ExecutionTempDir {
    path: PathBuf,
    budget: u64,
    removed: bool,
}

fn used(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            // `DirEntry::metadata` does not follow symlinks.
            Ok(m) if m.is_dir() => used(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl ExecutionTempDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size budget in bytes.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes currently used (apparent file sizes, symlinks not followed).
    pub fn used_bytes(&self) -> u64 {
        used(&self.path)
    }

    /// E3003 when the dir holds more than its budget.
    pub fn check(&self) -> Result<(), BrokerError> {
        let used = self.used_bytes();
        if used > self.budget {
            return Err(BrokerError {
                code: ErrorCode::TempDiskExceeded,
                message: format!(
                    "temp dir holds {used} bytes, above the fs:temp size {}",
                    self.budget
                ),
                details: Some(serde_json::json!({
                    "capability": "fs:temp",
                    "target": "temp_dir",
                    "allow_with": format!("fs:temp: {{ size: {} }}", used),
                })),
            });
        }
        Ok(())
    }

    /// Remove the directory and everything in it.
    pub fn remove(mut self) -> std::io::Result<()> {
        self.removed = true;
        std::fs::remove_dir_all(&self.path)
    }
}

impl Drop for ExecutionTempDir {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove execution temp dir");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_budget_and_cleanup() -> std::io::Result<()> {
        let base = tempfile::tempdir()?;
        let fs = FsModule::new(base.path().join("tmp"));
        let dir = fs.create("req_1/../../x", 100)?;
        assert!(dir.path().starts_with(base.path().join("tmp")));
        assert!(!dir.path().to_string_lossy().contains(".."));
        std::fs::write(dir.path().join("a"), vec![0u8; 60])?;
        assert!(dir.check().is_ok());
        std::fs::create_dir(dir.path().join("sub"))?;
        std::fs::write(dir.path().join("sub/b"), vec![0u8; 60])?;
        assert_eq!(dir.used_bytes(), 120);
        assert_eq!(
            dir.check().err().map(|e| e.code),
            Some(ErrorCode::TempDiskExceeded)
        );
        let p = dir.path().to_path_buf();
        drop(dir);
        assert!(!p.exists(), "removed on drop");
        let dir = fs.create("r2", 1)?;
        let p = dir.path().to_path_buf();
        dir.remove()?;
        assert!(!p.exists());
        Ok(())
    }
}
