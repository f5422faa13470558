//! Several providers in one shard, by name: each quota's machines live at the provider named
//! like the quota's provider (`--provider aws=grpc://...`), and an unnamed provider (`--provider
//! grpc://...`, or the built-in `sim`) takes every quota no named one claims.

use std::collections::BTreeMap;
use std::sync::Arc;

use ballast_protocol::providerpb::Shape;
use parking_lot::Mutex;

use super::{Provider, ProviderError};

/// The providers a shard drives.
pub struct Providers {
    named: BTreeMap<String, Arc<dyn Provider>>,
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
            named,
            fallback,
            shapes: Mutex::new(BTreeMap::new()),
        }
    }

    /// The key of the provider of `quota_provider`'s machines (`""`: the fallback).
    fn key<'a>(&'a self, quota_provider: &'a str) -> Option<&'a str> {
        if self.named.contains_key(quota_provider) {
            Some(quota_provider)
        } else {
            self.fallback.as_ref().map(|_| "")
        }
    }

    fn by_key(&self, key: &str) -> Option<&Arc<dyn Provider>> {
        if key.is_empty() {
            self.fallback.as_ref()
        } else {
            self.named.get(key)
        }
    }

    /// The provider of `quota_provider`'s machines.
    pub fn of(&self, quota_provider: &str) -> Result<&dyn Provider, ProviderError> {
        self.key(quota_provider)
            .and_then(|key| self.by_key(key))
            .map(|p| p.as_ref())
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
    pub fn all(&self) -> Vec<(String, &dyn Provider)> {
        let mut all: Vec<(String, &dyn Provider)> = self
            .named
            .iter()
            .map(|(name, p)| (name.clone(), p.as_ref()))
            .collect();
        if let Some(p) = &self.fallback {
            all.push((String::new(), p.as_ref()));
        }
        all
    }

    /// Whether a quota provider's machines live at provider `name` (`""`: the fallback).
    pub fn serves(&self, name: &str, quota_provider: &str) -> bool {
        self.key(quota_provider) == Some(name)
    }

    /// The shapes of `quota_provider`'s provider (asked once, when first needed).
    pub async fn shapes(&self, quota_provider: &str) -> Result<Arc<Vec<Shape>>, ProviderError> {
        let key = self.key(quota_provider).unwrap_or("").to_string();
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
        assert_eq!(addr(providers.of("aws").unwrap()), addr(aws.as_ref()));
        assert_eq!(addr(providers.of("gcp").unwrap()), addr(fallback.as_ref()));
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
}
