//! Named on/off switches (motan-go core/switcher.go, spec 4.10/4.14): registered by the
//! `switcher` config section, by filters (a rateLimit filter registers `<conf-id>_rateLimit`,
//! on) and by registry commands; read by filters (degrade, rateLimit) and `/switcher/*`.
//! Registering an existing name keeps its value (upstream ignores re-registration).
use crate::locks::Unpoisoned;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// Suffix of the per-method degrade switches; they may be turned on before they exist.
pub const DEGRADE_SUFFIX: &str = ".degrade";

/// One named switch.
#[derive(Debug)]
pub struct Switch {
    name: String,
    value: AtomicBool,
}

impl Switch {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn is_on(&self) -> bool {
        self.value.load(Ordering::Relaxed)
    }
}

/// The agent's switches.
#[derive(Debug, Default)]
pub struct Switchers {
    map: RwLock<HashMap<String, Arc<Switch>>>,
    /// How many `*.degrade` switches are on: while 0, `degrade` filters skip the lookup (and
    /// the name building it needs) entirely.
    degrade_on: AtomicUsize,
}

impl Switchers {
    /// Register `name` with `value` unless it exists; either way return the switch. An empty
    /// name is refused (upstream logs and ignores it).
    pub fn register(&self, name: &str, value: bool) -> Option<Arc<Switch>> {
        if name.is_empty() {
            tracing::warn!("switcher with an empty name not registered");
            return None;
        }
        if let Some(s) = self.switch(name) {
            return Some(s);
        }
        let mut map = self.map.write_unpoisoned();
        let s = map.entry(name.to_string()).or_insert_with(|| {
            tracing::info!("switcher {name} registered, value {value}");
            if value && name.ends_with(DEGRADE_SUFFIX) {
                self.degrade_on.fetch_add(1, Ordering::Relaxed);
            }
            Arc::new(Switch {
                name: name.to_string(),
                value: AtomicBool::new(value),
            })
        });
        Some(s.clone())
    }

    /// The registered switch of that name.
    pub fn switch(&self, name: &str) -> Option<Arc<Switch>> {
        self.map.read_unpoisoned().get(name).cloned()
    }

    /// Its value, None when not registered.
    pub fn get(&self, name: &str) -> Option<bool> {
        self.map.read_unpoisoned().get(name).map(|s| s.is_on())
    }

    /// Registered and on.
    pub fn is_on(&self, name: &str) -> bool {
        self.get(name).unwrap_or(false)
    }

    /// Set a registered switch; false when there is none of that name. Degrade switches
    /// (`*.degrade`) are registered on first use, since their names follow the methods called.
    pub fn set(&self, name: &str, value: bool) -> bool {
        let s = match self.switch(name) {
            Some(s) => s,
            None if name.ends_with(DEGRADE_SUFFIX) && name.len() > DEGRADE_SUFFIX.len() => {
                match self.register(name, false) {
                    Some(s) => s,
                    None => return false,
                }
            }
            None => return false,
        };
        let old = s.value.swap(value, Ordering::Relaxed);
        if old != value {
            if name.ends_with(DEGRADE_SUFFIX) {
                if value {
                    self.degrade_on.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.degrade_on.fetch_sub(1, Ordering::Relaxed);
                }
            }
            tracing::info!("switcher {name} set to {value}");
        }
        true
    }

    /// Every switch and its value, by name.
    pub fn all(&self) -> BTreeMap<String, bool> {
        self.map
            .read_unpoisoned()
            .iter()
            .map(|(k, s)| (k.clone(), s.is_on()))
            .collect()
    }

    pub fn any_degrade_on(&self) -> bool {
        self.degrade_on.load(Ordering::Relaxed) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_keeps_the_first_value_and_set_needs_a_registered_name() {
        let s = Switchers::default();
        assert!(s.register("", true).is_none());
        assert!(s.register("feature.x", true).unwrap().is_on());
        assert!(
            s.register("feature.x", false).unwrap().is_on(),
            "re-register keeps the value"
        );
        assert_eq!(s.get("feature.x"), Some(true));
        assert_eq!(s.get("nope"), None);
        assert!(!s.is_on("nope"));
        assert!(!s.set("nope", true), "unregistered");
        assert!(s.get("nope").is_none());
        assert!(s.set("feature.x", false));
        assert_eq!(s.get("feature.x"), Some(false));
        // Degrade switches come into being when set.
        assert!(!s.any_degrade_on());
        assert!(s.set("hello.hi.degrade", true));
        assert!(s.any_degrade_on());
        assert!(s.set("hello.hi.degrade", true), "same value again");
        assert_eq!(s.degrade_on.load(Ordering::Relaxed), 1);
        assert!(!s.set(".degrade", true), "no name before the suffix");
        assert!(s.set("hello.hi.degrade", false));
        assert!(!s.any_degrade_on());
        assert_eq!(
            s.all(),
            BTreeMap::from([
                ("feature.x".to_string(), false),
                ("hello.hi.degrade".to_string(), false)
            ])
        );
    }
}
