//! Several providers in one shard, by name: each quota's machines live at the provider named
//! like the quota's provider (`--provider aws=grpc://...`), and an unnamed provider (`--provider
//! grpc://...`, or the built-in `sim`) takes every quota no named one claims. With `--provider
//! registry` the names also come from the coordinator's provider registry and follow its
//! changes; a name given on the command line wins over the registry's entry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ballast_protocol::providerpb::Shape;
use parking_lot::{Mutex, RwLock};

use super::{Provider, ProviderError};

/// The providers a shard drives.
pub struct Providers {
    named: RwLock<BTreeMap<String, Arc<dyn Provider>>>,
    /// Names given on the command line: the registry does not replace them.
    pinned: BTreeSet<String>,
    /// Endpoints of the names that came from the registry.
    registered: Mutex<BTreeMap<String, String>>,
    fallback: Option<Arc<dyn Provider>>,
    /// Shapes per provider (`""`: the fallback), read once each answers `Describe`.
    shapes: Mutex<BTreeMap<String, Arc<Vec<Shape>>>>,
}

impl Providers {
    /// Providers by name, and the one for every other quota.
    pub fn new(
        named: BTreeMap<String, Arc<dyn Provider>>,
        fallback: Option<Arc<dyn Provider>>,
    ) -> Providers {
        Providers {
            pinned: named.keys().cloned().collect(),
            named: RwLock::new(named),
            registered: Mutex::new(BTreeMap::new()),
            fallback,
            shapes: Mutex::new(BTreeMap::new()),
        }
    }

    /// The key of the provider of `quota_provider`'s machines (`""`: the fallback).
    fn key(&self, quota_provider: &str) -> Option<String> {
        if self.named.read().contains_key(quota_provider) {
            Some(quota_provider.to_string())
        } else {
            self.fallback.as_ref().map(|_| String::new())
        }
    }

    fn by_key(&self, key: &str) -> Option<Arc<dyn Provider>> {
        if key.is_empty() {
            self.fallback.clone()
        } else {
            self.named.read().get(key).cloned()
        }
    }

    /// Replaces the providers that come from the coordinator's registry with `entries` (name
    /// → endpoint), building a client for each new or moved endpoint with `connect`. Names
    /// given on the command line are left alone. Returns what changed, for the log; a name
    /// whose client cannot be built keeps its old one and is reported.
    pub fn set_registered(
        &self,
        entries: &BTreeMap<String, String>,
        connect: impl Fn(&str) -> Result<Arc<dyn Provider>, String>,
    ) -> Vec<String> {
        let mut registered = self.registered.lock();
        let mut changes = Vec::new();
        let mut named = self.named.write();
        for (name, endpoint) in entries {
            if self.pinned.contains(name) || registered.get(name) == Some(endpoint) {
                continue;
            }
            match connect(endpoint) {
                Ok(provider) => {
                    named.insert(name.clone(), provider);
                    registered.insert(name.clone(), endpoint.clone());
                    self.shapes.lock().remove(name);
                    changes.push(format!("{name} at {endpoint}"));
                }
                Err(e) => changes.push(format!("{name} at {endpoint} unusable: {e}")),
            }
        }
        let gone: Vec<String> = registered
            .keys()
            .filter(|name| !entries.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            registered.remove(&name);
            named.remove(&name);
            self.shapes.lock().remove(&name);
            changes.push(format!("{name} removed"));
        }
        changes
    }

    /// The provider of `quota_provider`'s machines.
    pub fn of(&self, quota_provider: &str) -> Result<Arc<dyn Provider>, ProviderError> {
        self.key(quota_provider)
            .and_then(|key| self.by_key(&key))
            .ok_or_else(|| {
                ProviderError::Unreachable(format!(
                    "no provider for quota provider {quota_provider:?}: start the shard with --provider {quota_provider}=URL"
                ))
            })
    }

    /// Whether machines of `a` and `b` live at the same provider.
    pub fn same(&self, a: &str, b: &str) -> bool {
        self.key(a).is_some() && self.key(a) == self.key(b)
    }

    /// Every provider, with its name (`""`: the fallback).
    pub fn all(&self) -> Vec<(String, Arc<dyn Provider>)> {
        let mut all: Vec<(String, Arc<dyn Provider>)> = self
            .named
            .read()
            .iter()
            .map(|(name, p)| (name.clone(), p.clone()))
            .collect();
        if let Some(p) = &self.fallback {
            all.push((String::new(), p.clone()));
        }
        all
    }

    /// Whether a quota provider's machines live at provider `name` (`""`: the fallback).
    pub fn serves(&self, name: &str, quota_provider: &str) -> bool {
        self.key(quota_provider).as_deref() == Some(name)
    }

    /// The shapes of `quota_provider`'s provider (asked once, when first needed).
    pub async fn shapes(&self, quota_provider: &str) -> Result<Arc<Vec<Shape>>, ProviderError> {
        let key = self.key(quota_provider).unwrap_or_default();
        if let Some(shapes) = self.shapes.lock().get(&key).cloned() {
            return Ok(shapes);
        }
        let described = self.of(quota_provider)?.describe().await?;
        if described.contract != ballast_protocol::provider::CONTRACT {
            return Err(ProviderError::Contract(format!(
                "the provider serves contract {:?}, not {}",
                described.contract,
                ballast_protocol::provider::CONTRACT
            )));
        }
        let shapes = Arc::new(described.shapes);
        self.shapes.lock().insert(key, shapes.clone());
        Ok(shapes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::SimulatedConfig;
    use crate::provider::local::LocalProvider;

    fn sim() -> Arc<dyn Provider> {
        Arc::new(LocalProvider::new(SimulatedConfig::default()))
    }

    #[test]
    fn quotas_go_to_their_named_provider_and_the_rest_to_the_unnamed_one() {
        let aws = sim();
        let fallback = sim();
        let providers = Providers::new(
            BTreeMap::from([("aws".to_string(), aws.clone())]),
            Some(fallback.clone()),
        );
        let addr = |p: &dyn Provider| p as *const dyn Provider as *const u8;
        assert_eq!(
            addr(providers.of("aws").unwrap().as_ref()),
            addr(aws.as_ref())
        );
        assert_eq!(
            addr(providers.of("gcp").unwrap().as_ref()),
            addr(fallback.as_ref())
        );
        assert!(providers.serves("aws", "aws"));
        assert!(providers.serves("", "gcp"));
        assert!(!providers.serves("", "aws"));
        assert!(providers.same("gcp", "azure"));
        assert!(!providers.same("aws", "gcp"));
        assert_eq!(providers.all().len(), 2);

        let only_named = Providers::new(BTreeMap::from([("aws".to_string(), aws)]), None);
        let error = only_named.of("gcp").err().expect("no provider for gcp");
        assert!(error.to_string().contains("--provider gcp=URL"), "{error}");
        assert!(
            error.retryable(),
            "a missing provider is reported, not fatal"
        );
    }

    #[test]
    fn the_registry_adds_moves_and_removes_names_but_never_a_pinned_one() {
        let pinned = sim();
        let providers = Providers::new(BTreeMap::from([("aws".to_string(), pinned.clone())]), None);
        let built = std::sync::atomic::AtomicUsize::new(0);
        let connect = |endpoint: &str| {
            built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if endpoint.starts_with("bad") {
                Err(format!("{endpoint} is not a URL"))
            } else {
                Ok(sim())
            }
        };
        let entries = |list: &[(&str, &str)]| -> BTreeMap<String, String> {
            list.iter()
                .map(|(n, e)| (n.to_string(), e.to_string()))
                .collect()
        };
        let addr = |p: &dyn Provider| p as *const dyn Provider as *const u8;

        let changes = providers.set_registered(
            &entries(&[("aws", "grpc://elsewhere:1"), ("gcp", "grpc://g:1")]),
            connect,
        );
        assert_eq!(
            changes,
            ["gcp at grpc://g:1"],
            "the pinned aws is not replaced"
        );
        assert_eq!(
            addr(providers.of("aws").unwrap().as_ref()),
            addr(pinned.as_ref())
        );
        let gcp = providers.of("gcp").expect("gcp from the registry");

        // The same list again builds nothing; a moved endpoint builds a new client.
        assert!(
            providers
                .set_registered(&entries(&[("gcp", "grpc://g:1")]), connect)
                .is_empty()
        );
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 1);
        providers.set_registered(&entries(&[("gcp", "grpc://g:2")]), connect);
        assert_ne!(
            addr(providers.of("gcp").unwrap().as_ref()),
            addr(gcp.as_ref())
        );

        // An unusable endpoint keeps the old client and says so; a removed entry goes.
        let changes = providers.set_registered(&entries(&[("gcp", "bad")]), connect);
        assert!(changes[0].contains("unusable"), "{changes:?}");
        assert!(providers.of("gcp").is_ok());
        let changes = providers.set_registered(&entries(&[]), connect);
        assert_eq!(changes, ["gcp removed"]);
        assert!(providers.of("gcp").is_err());
        assert!(providers.of("aws").is_ok(), "pinned names stay");
    }
}
