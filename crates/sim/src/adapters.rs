//! Engine state that vLLM changes at run time through its LoRA and sleep routes: adapters
//! loaded by `/v1/load_lora_adapter` are served by name beside the base models, and
//! `/sleep` / `/wake_up` toggle the sleep mode `/is_sleeping` reports.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

/// One loaded LoRA adapter.
#[derive(Clone, Debug)]
pub(crate) struct Lora {
    pub(crate) name: String,
    pub(crate) path: String,
}

/// The server's run-time adapters and sleep flag.
#[derive(Default)]
pub(crate) struct Adapters {
    loras: RwLock<Vec<Lora>>,
    sleeping: AtomicBool,
}

/// Why a LoRA route refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LoraError {
    /// Loading a name already loaded (vLLM: 400).
    AlreadyLoaded,
    /// Unloading a name never loaded (vLLM: 404).
    NotFound,
}

impl Adapters {
    /// Load `lora`, unless its name is taken (base models included).
    pub(crate) fn load(&self, lora: Lora, base_models: &[String]) -> Result<(), LoraError> {
        let mut loras = self.loras.write();
        if base_models.contains(&lora.name) || loras.iter().any(|l| l.name == lora.name) {
            return Err(LoraError::AlreadyLoaded);
        }
        loras.push(lora);
        Ok(())
    }

    /// Unload the adapter `name`.
    pub(crate) fn unload(&self, name: &str) -> Result<(), LoraError> {
        let mut loras = self.loras.write();
        let before = loras.len();
        loras.retain(|l| l.name != name);
        if loras.len() == before {
            Err(LoraError::NotFound)
        } else {
            Ok(())
        }
    }

    /// Whether an adapter named `name` is loaded.
    pub(crate) fn serves(&self, name: &str) -> bool {
        self.loras.read().iter().any(|l| l.name == name)
    }

    /// The loaded adapters, in load order.
    pub(crate) fn loras(&self) -> Vec<Lora> {
        self.loras.read().clone()
    }

    /// Enter or leave sleep mode; the previous state.
    pub(crate) fn set_sleeping(&self, sleeping: bool) -> bool {
        self.sleeping.swap(sleeping, Ordering::Relaxed)
    }

    /// Whether the engine sleeps.
    pub(crate) fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora(name: &str) -> Lora {
        Lora {
            name: name.into(),
            path: format!("/adapters/{name}"),
        }
    }

    #[test]
    fn an_adapter_is_served_until_unloaded() {
        let a = Adapters::default();
        let base = vec!["base".to_owned()];
        assert_eq!(a.load(lora("sql"), &base), Ok(()));
        assert!(a.serves("sql"));
        assert_eq!(a.load(lora("sql"), &base), Err(LoraError::AlreadyLoaded));
        assert_eq!(a.load(lora("base"), &base), Err(LoraError::AlreadyLoaded));
        assert_eq!(a.unload("sql"), Ok(()));
        assert!(!a.serves("sql"));
        assert_eq!(a.unload("sql"), Err(LoraError::NotFound));
    }

    #[test]
    fn sleep_toggles() {
        let a = Adapters::default();
        assert!(!a.set_sleeping(true));
        assert!(a.is_sleeping());
        assert!(a.set_sleeping(false));
        assert!(!a.is_sleeping());
    }
}
