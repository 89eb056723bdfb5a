//! The router process's own figures, read from `/proc` (Linux; `None` elsewhere or when
//! unreadable).

/// Open file descriptors of this process: the entries of `/proc/self/fd`.
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory handle being read is one of them.
    Some((entries.count() as u64).saturating_sub(1))
}

/// The soft limit of open file descriptors: `Max open files` in `/proc/self/limits`.
pub fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    soft_limit(&limits, "Max open files")
}

/// The soft limit of the `name` row of a `/proc/<pid>/limits` text.
fn soft_limit(limits: &str, name: &str) -> Option<u64> {
    let row = limits.lines().find(|line| line.starts_with(name))?;
    row[name.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_read_from_its_row() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(soft_limit(text, "Max open files"), Some(1024));
        assert_eq!(
            soft_limit(text, "Max cpu time"),
            None,
            "unlimited is no number"
        );
        assert_eq!(soft_limit(text, "Max locked memory"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_open_fds_under_its_limit() {
        let (open, max) = (open_fds().unwrap(), max_fds().unwrap());
        assert!(open >= 3 && open <= max, "{open} of {max}");
    }
}
