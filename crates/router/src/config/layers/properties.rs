//! Properties of configuration layering: for any mix of settings given in the file, the
//! environment and the flags, each setting takes its value from the highest layer that gives
//! it (flags over environment over file over default), and says where it came from.

use proptest::prelude::*;

use super::tests::{load, place_of};
use super::*;

const CASES: u32 = 10_000;

/// One setting's value in each layer that gives it, as the layer writes it.
#[derive(Debug, Clone)]
struct Given {
    file: Option<String>,
    env: Option<String>,
    flag: Option<String>,
}

fn given<T: ToString + std::fmt::Debug>(
    value: impl Strategy<Value = T> + Clone,
) -> impl Strategy<Value = Given> {
    let text = move || prop::option::of(value.clone().prop_map(|v| v.to_string()));
    (text(), text(), text()).prop_map(|(file, env, flag)| Given { file, env, flag })
}

/// A setting, its flag, its default, and what each layer says of it.
struct Setting<'a> {
    key: &'a str,
    flag: &'a str,
    default: &'a str,
    given: &'a Given,
}

impl Setting<'_> {
    fn env_name(&self) -> String {
        format!("VLLM_ROUTER_{}", self.key.to_ascii_uppercase())
    }

    /// The value that must win, and where it comes from.
    fn winner(&self) -> (String, Place) {
        let g = self.given;
        match (&g.flag, &g.env, &g.file) {
            (Some(v), _, _) => (v.clone(), Place::Flag),
            (None, Some(v), _) => (v.clone(), Place::Env(self.env_name())),
            (None, None, Some(v)) => (
                v.clone(),
                Place::File {
                    path: "router.toml".into(),
                    key: self.key.to_owned(),
                },
            ),
            (None, None, None) => (self.default.to_owned(), Place::Default),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn each_setting_comes_from_the_highest_layer_that_gives_it(
        port in given(1u16..),
        retries in given(0u32..20),
        threshold in given((0u32..=100).prop_map(|p| f64::from(p) / 100.0)),
        timeout in given(1u64..100_000),
    ) {
        let settings = [
            Setting { key: "port", flag: "--port", default: "30000", given: &port },
            Setting { key: "retry_max_retries", flag: "--retry-max-retries", default: "3", given: &retries },
            Setting { key: "cache_threshold", flag: "--cache-threshold", default: "0.3", given: &threshold },
            Setting { key: "request_timeout_secs", flag: "--request-timeout-secs", default: "1800", given: &timeout },
        ];
        let mut file = String::new();
        let mut vars: Vec<(String, String)> = Vec::new();
        let mut argv: Vec<String> = Vec::new();
        for s in &settings {
            if let Some(v) = &s.given.file {
                file.push_str(&format!("{} = {v}\n", s.key));
            }
            if let Some(v) = &s.given.env {
                vars.push((s.env_name(), v.clone()));
            }
            if let Some(v) = &s.given.flag {
                argv.extend([s.flag.to_owned(), v.clone()]);
            }
        }
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let config = load(&argv, &vars, Some(&file)).map_err(TestCaseError::fail)?;
        let values = [
            config.port.to_string(),
            config.retry.max_retries.to_string(),
            config.policy_config.cache_aware.cache_threshold.to_string(),
            config.timeouts.total.as_secs().to_string(),
        ];
        for (s, value) in settings.iter().zip(values) {
            let (want, place) = s.winner();
            prop_assert_eq!(&value, &want, "{}", s.key);
            prop_assert_eq!(place_of(&config, s.key), place, "{}", s.key);
        }
    }
}
