//! The log files of `--log-dir`: the general log, the errors log and the JSON lines. Each is
//! written by its own thread, in batches (a request never waits for a disk; see
//! [`super::lines`]), rotated on its own, and pruned to the newest `--log-max-files`.

use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_appender::rolling::{RollingFileAppender, Rotation};

use super::lines::{self, Lines, Writing};
use crate::cli::LogRotation;
use crate::sync::Mutex;

/// One log file: its name is `{prefix}.{suffix}`, or `{prefix}.{date}.{suffix}` when rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFile {
    /// The name before the date.
    pub prefix: &'static str,
    /// The name after the date.
    pub suffix: &'static str,
}

/// Everything at the level, as text.
pub const GENERAL: LogFile = LogFile {
    prefix: "vllm-router",
    suffix: "log",
};
/// Warnings and errors only, as text.
pub const ERRORS: LogFile = LogFile {
    prefix: "vllm-router.errors",
    suffix: "log",
};
/// Everything at the level, one JSON object per line.
pub const JSON: LogFile = LogFile {
    prefix: "vllm-router",
    suffix: "jsonl",
};

impl LogFile {
    /// The date part of `name` when it is a rotated file of this log.
    fn date_of<'n>(&self, name: &'n str) -> Option<&'n str> {
        let date = name
            .strip_prefix(self.prefix)?
            .strip_prefix('.')?
            .strip_suffix(self.suffix)?
            .strip_suffix('.')?;
        // The general log's prefix and suffix also frame the errors log's names: only a date
        // (digits and dashes) may sit between them.
        (!date.is_empty() && date.bytes().all(|b| b.is_ascii_digit() || b == b'-')).then_some(date)
    }
}

/// The log directory cannot be created or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write log files in {}: {reason}", dir.display())]
pub struct LogError {
    dir: PathBuf,
    reason: String,
}

impl LogError {
    pub(super) fn new(dir: &Path, reason: String) -> Self {
        Self {
            dir: dir.to_owned(),
            reason,
        }
    }
}

/// Keeps the log writers (stderr's and the files') running; dropping it (or [`LogGuard::close`]) writes out every
/// buffered line. Clones share the writers.
#[derive(Clone, Default)]
pub struct LogGuard(Arc<Mutex<Vec<Writing>>>);

impl LogGuard {
    /// Keep this writer running too.
    pub(super) fn keep(&self, writer: Writing) {
        self.0.lock().push(writer);
    }

    /// Write out every buffered line and stop the writers: for an exit that skips destructors
    /// (`std::process::exit`). Lines logged afterwards are lost.
    pub fn close(&self) {
        let writers = std::mem::take(&mut *self.0.lock());
        // Each writer finishes its batch, outside the lock.
        writers.into_iter().for_each(Writing::close);
    }
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard")
            .field("writers", &self.0.lock().len())
            .finish()
    }
}

/// The writers of the three files.
pub(super) struct Files {
    pub(super) general: Lines,
    pub(super) errors: Lines,
    pub(super) json: Lines,
    pub(super) guard: LogGuard,
}

/// Create `dir` if missing and open the three logs in it.
pub(super) fn open(
    dir: &Path,
    rotation: LogRotation,
    keep: NonZeroUsize,
) -> Result<Files, LogError> {
    let fail = |reason: String| LogError {
        dir: dir.to_owned(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    let mut guards = Vec::with_capacity(3);
    let mut writer = |log: LogFile| -> Result<Lines, LogError> {
        let file = Pruned::open(dir, log, rotation, keep).map_err(fail)?;
        let (writer, guard) =
            lines::spawn("vllm-router-log", file).map_err(|e| fail(e.to_string()))?;
        guards.push(guard);
        Ok(writer)
    };
    let general = writer(GENERAL)?;
    let errors = writer(ERRORS)?;
    let json = writer(JSON)?;
    Ok(Files {
        general,
        errors,
        json,
        guard: LogGuard(Arc::new(Mutex::new(guards))),
    })
}

/// Seconds between rotations, `None` when files never rotate.
fn period(rotation: LogRotation) -> Option<u64> {
    match rotation {
        LogRotation::Minutely => Some(60),
        LogRotation::Hourly => Some(3600),
        LogRotation::Daily => Some(86_400),
        LogRotation::Never => None,
    }
}

/// The first rotation after `now` (Unix seconds): files rotate on UTC minutes, hours and days,
/// which are whole multiples of the period since the epoch.
fn next_rotation(now: u64, period: u64) -> u64 {
    (now / period + 1) * period
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A rotating file that deletes its oldest rotated files past `keep` once a rotation is due.
/// (The appender's own pruning counts every file whose name starts and ends like its own, so
/// the general log's would delete the errors log's files.)
struct Pruned {
    file: RollingFileAppender,
    dir: PathBuf,
    log: LogFile,
    keep: usize,
    period: Option<u64>,
    /// Unix second from which the next write prunes.
    due: u64,
}

impl Pruned {
    fn open(
        dir: &Path,
        log: LogFile,
        rotation: LogRotation,
        keep: NonZeroUsize,
    ) -> Result<Self, String> {
        let file = RollingFileAppender::builder()
            .rotation(match rotation {
                LogRotation::Minutely => Rotation::MINUTELY,
                LogRotation::Hourly => Rotation::HOURLY,
                LogRotation::Daily => Rotation::DAILY,
                LogRotation::Never => Rotation::NEVER,
            })
            .filename_prefix(log.prefix)
            .filename_suffix(log.suffix)
            .build(dir)
            .map_err(|e| e.to_string())?;
        let period = period(rotation);
        let pruned = Self {
            file,
            dir: dir.to_owned(),
            log,
            keep: keep.get(),
            period,
            due: period.map_or(u64::MAX, |p| next_rotation(unix_now(), p)),
        };
        if period.is_some() {
            // Files of earlier runs count too, for a smaller --log-max-files to apply.
            prune(&pruned.dir, log, pruned.keep).map_err(|e| e.to_string())?;
        }
        Ok(pruned)
    }
}

impl Write for Pruned {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The clock is read before the appender reads it: once this is past the rotation, the
        // write below went to the new file.
        let now = unix_now();
        let written = self.file.write(buf)?;
        if let Some(period) = self.period
            && now >= self.due
        {
            self.due = next_rotation(now, period);
            if let Err(error) = prune(&self.dir, self.log, self.keep) {
                eprintln!(
                    "cannot remove old log files in {}: {error}",
                    self.dir.display()
                );
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Delete the rotated files of `log` in `dir` but the newest `keep`.
fn prune(dir: &Path, log: LogFile, keep: usize) -> io::Result<()> {
    let mut rotated: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str()
            && let Some(date) = log.date_of(name)
        {
            rotated.push((date.to_owned(), entry.path()));
        }
    }
    // Dates are written most significant first, so names sort in time order.
    rotated.sort_unstable();
    let surplus = rotated.len().saturating_sub(keep);
    for (_, path) in rotated.into_iter().take(surplus) {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vllm-router-logs-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Open the three logs, write a line to each and close them; the file names.
    fn written(rotation: LogRotation) -> Vec<String> {
        let dir = temp_dir("names");
        let files = open(&dir, rotation, NonZeroUsize::new(7).unwrap()).unwrap();
        for writer in [files.general, files.errors, files.json] {
            (&writer).write_all(b"a line\n").unwrap();
        }
        files.guard.close();
        let out = names(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        out
    }

    /// The file names with their date replaced by its shape.
    fn shapes(names: &[String]) -> Vec<String> {
        names
            .iter()
            .map(|n| {
                n.chars()
                    .map(|c| if c.is_ascii_digit() { '9' } else { c })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn unrotated_logs_have_plain_names() {
        assert_eq!(
            written(LogRotation::Never),
            [
                "vllm-router.errors.log",
                "vllm-router.jsonl",
                "vllm-router.log"
            ]
        );
    }

    #[test]
    fn rotated_logs_carry_the_period_in_their_names() {
        assert_eq!(
            shapes(&written(LogRotation::Minutely)),
            [
                "vllm-router.9999-99-99-99-99.jsonl",
                "vllm-router.9999-99-99-99-99.log",
                "vllm-router.errors.9999-99-99-99-99.log",
            ]
        );
        assert_eq!(
            shapes(&written(LogRotation::Hourly)),
            [
                "vllm-router.9999-99-99-99.jsonl",
                "vllm-router.9999-99-99-99.log",
                "vllm-router.errors.9999-99-99-99.log",
            ]
        );
        assert_eq!(
            shapes(&written(LogRotation::Daily)),
            [
                "vllm-router.9999-99-99.jsonl",
                "vllm-router.9999-99-99.log",
                "vllm-router.errors.9999-99-99.log",
            ]
        );
    }

    #[test]
    fn each_log_knows_only_its_own_rotated_files() {
        let cases = [
            ("vllm-router.2026-01-02.log", Some("2026-01-02"), None, None),
            (
                "vllm-router.errors.2026-01-02.log",
                None,
                Some("2026-01-02"),
                None,
            ),
            (
                "vllm-router.2026-01-02-03-04.jsonl",
                None,
                None,
                Some("2026-01-02-03-04"),
            ),
            ("vllm-router.log", None, None, None),
            ("vllm-router.errors.log", None, None, None),
            ("vllm-router.jsonl", None, None, None),
            ("vllm-router.old.2026-01-02.log", None, None, None),
            ("notes.2026-01-02.log", None, None, None),
        ];
        for (name, general, errors, json) in cases {
            assert_eq!(GENERAL.date_of(name), general, "{name}");
            assert_eq!(ERRORS.date_of(name), errors, "{name}");
            assert_eq!(JSON.date_of(name), json, "{name}");
        }
    }

    #[test]
    fn pruning_keeps_the_newest_files_of_each_log_and_nothing_else_goes() {
        let dir = temp_dir("prune");
        let dates = ["2026-01-01-00-00", "2026-01-01-00-01", "2026-01-01-00-02"];
        let mut expected = vec![
            "notes.txt".to_owned(),
            "vllm-router.log".to_owned(),
            "vllm-router.old.2020-01-01.log".to_owned(),
        ];
        for name in &expected {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        std::fs::create_dir(dir.join("vllm-router.2000-01-01.log")).unwrap();
        expected.push("vllm-router.2000-01-01.log".to_owned());
        for log in [GENERAL, ERRORS, JSON] {
            // Written newest first: the order of creation does not decide.
            for date in dates.iter().rev() {
                let name = format!("{}.{date}.{}", log.prefix, log.suffix);
                std::fs::write(dir.join(&name), "x").unwrap();
                if *date != dates[0] {
                    expected.push(name);
                }
            }
        }
        for log in [GENERAL, ERRORS, JSON] {
            prune(&dir, log, 2).unwrap();
        }
        expected.sort();
        assert_eq!(names(&dir), expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_past_the_rotation_prunes_and_others_do_not() {
        let dir = temp_dir("due");
        let old = |date: &str| dir.join(format!("vllm-router.{date}.log"));
        let mut file = Pruned::open(
            &dir,
            GENERAL,
            LogRotation::Minutely,
            NonZeroUsize::new(1).unwrap(),
        )
        .unwrap();
        std::fs::write(old("2000-01-01-00-00"), "x").unwrap();
        file.write_all(b"before the rotation\n").unwrap();
        assert!(old("2000-01-01-00-00").exists(), "pruned before a rotation");

        file.due = 0;
        file.write_all(b"after it\n").unwrap();
        assert!(
            !old("2000-01-01-00-00").exists(),
            "not pruned at the rotation"
        );
        assert!(file.due > unix_now());
        let left = names(&dir);
        assert_eq!(shapes(&left), ["vllm-router.9999-99-99-99-99.log"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotations_fall_on_whole_periods() {
        assert_eq!(next_rotation(0, 60), 60);
        assert_eq!(next_rotation(59, 60), 60);
        assert_eq!(next_rotation(60, 60), 120);
        // 2026-01-02T03:04:05Z: the next hour and the next UTC midnight.
        assert_eq!(next_rotation(1_767_323_045, 3600), 1_767_326_400);
        assert_eq!(next_rotation(1_767_323_045, 86_400), 1_767_398_400);
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_it() {
        let dir = temp_dir("unwritable");
        let file = dir.join("a-file");
        std::fs::write(&file, "x").unwrap();
        let error = open(&file, LogRotation::Daily, NonZeroUsize::new(1).unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.starts_with(&format!("cannot write log files in {}: ", file.display())),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
