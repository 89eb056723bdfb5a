//! A `.env` file in the working directory, as vllm-project/router's README suggests
//! (`API_KEY_VALIDATION_URLS=...`): its variables are read like environment variables, below
//! the real environment, which always wins. The process environment itself is not changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// The variables of one `.env` file.
#[derive(Debug, Default)]
pub struct DotEnv {
    path: Option<PathBuf>,
    vars: HashMap<String, String>,
}

impl DotEnv {
    /// `.env` in the working directory, or nothing when there is none.
    pub fn from_working_dir() -> Result<Self, ConfigError> {
        Self::read(Path::new(".env"))
    }

    /// The file at `path`, or nothing when it does not exist. A line that is not
    /// `NAME=value` (comments and blank lines aside) is an error naming the file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Ok(Self::default());
        }
        let bad = |reason: String| ConfigError::Flags {
            reason: format!("{}: {reason}", path.display()),
        };
        let mut vars = HashMap::new();
        for item in dotenvy::from_path_iter(path).map_err(|e| bad(e.to_string()))? {
            let (name, value) = item.map_err(|e| bad(e.to_string()))?;
            vars.insert(name, value);
        }
        Ok(Self {
            path: Some(path.to_owned()),
            vars,
        })
    }

    /// The value of `name`: the environment's, else the file's.
    pub fn var(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .or_else(|| self.vars.get(name).cloned())
    }

    /// The file read, and the names (never the values) it set that the environment did not,
    /// sorted; `None` when no file was read.
    pub fn applied(&self) -> Option<(&Path, Vec<&str>)> {
        let path = self.path.as_deref()?;
        let mut names: Vec<&str> = self
            .vars
            .keys()
            .filter(|name| std::env::var_os(name).is_none())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        Some((path, names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_values_and_refuses_bad_lines() {
        let dir = std::env::temp_dir().join(format!("dotenv-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(".env");
        std::fs::write(
            &file,
            "# keys\nVLLM_ROUTER_DOTENV_TEST_A=https://id.example/api/v4/user\n\nVLLM_ROUTER_DOTENV_TEST_B=\"x y\"\n",
        )
        .unwrap();
        let env = DotEnv::read(&file).unwrap();
        assert_eq!(
            env.var("VLLM_ROUTER_DOTENV_TEST_A").as_deref(),
            Some("https://id.example/api/v4/user")
        );
        assert_eq!(env.var("VLLM_ROUTER_DOTENV_TEST_B").as_deref(), Some("x y"));
        let (path, names) = env.applied().unwrap();
        assert_eq!(path, file);
        assert_eq!(
            names,
            ["VLLM_ROUTER_DOTENV_TEST_A", "VLLM_ROUTER_DOTENV_TEST_B"]
        );
        std::fs::write(&file, "NOT A LINE\n").unwrap();
        let err = DotEnv::read(&file).unwrap_err().to_string();
        assert!(err.contains(".env"), "{err}");
        assert!(
            DotEnv::read(&dir.join("absent"))
                .unwrap()
                .applied()
                .is_none()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
