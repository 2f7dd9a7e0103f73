//! A cache of versions for the one-process SQLite backend, so the hot read
//! path (GetVersion) does not cross to a database thread at all.
//!
//! Coherence: every committed write invalidates the models its events name
//! before anyone is told of the commit (its caller, watchers), and a reader
//! only fills the cache if no invalidation of that model happened since it
//! started reading (a generation count per model), so a value read from an
//! older snapshot can never land in the cache after a newer commit.
//! PostgreSQL replicas do not use it: another replica's writes would not
//! invalidate it.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::Version;

/// Most versions kept; the cache starts over when it is full.
const CAPACITY: usize = 50_000;

/// Versions by model and number.
#[derive(Default)]
pub struct VersionCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Cached versions, by model, then number.
    versions: HashMap<String, HashMap<i64, Version>>,
    /// How many versions are cached in all.
    len: usize,
    /// Invalidations per model so far.
    generations: HashMap<String, u64>,
}

impl VersionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached version, if any.
    pub fn get(&self, model: &str, version: i64) -> Option<Version> {
        self.lock()
            .versions
            .get(model)
            .and_then(|m| m.get(&version))
            .cloned()
    }

    /// The model's generation, to pass to [`VersionCache::insert`].
    pub fn generation(&self, model: &str) -> u64 {
        self.lock().generations.get(model).copied().unwrap_or(0)
    }

    /// Caches `v`, read after [`VersionCache::generation`] returned `generation`,
    /// unless its model was invalidated since.
    pub fn insert(&self, generation: u64, v: Version) {
        let mut inner = self.lock();
        if inner.generations.get(&v.model).copied().unwrap_or(0) != generation {
            return;
        }
        if inner.len >= CAPACITY {
            inner.versions.clear();
            inner.len = 0;
        }
        let previous = inner
            .versions
            .entry(v.model.clone())
            .or_default()
            .insert(v.version, v);
        if previous.is_none() {
            inner.len += 1;
        }
    }

    /// Forgets every cached version of these models.
    pub fn invalidate<'a>(&self, models: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.lock();
        for model in models {
            *inner.generations.entry(model.to_owned()).or_default() += 1;
            if let Some(gone) = inner.versions.remove(model) {
                inner.len -= gone.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(model: &str, n: i64) -> Version {
        Version {
            model: model.into(),
            version: n,
            artifact_uri: String::new(),
            artifact_digest: String::new(),
            source: Default::default(),
            training_metrics: Default::default(),
            tags: Default::default(),
            description: String::new(),
            stage: crate::domain::Stage::None,
            aliases: Vec::new(),
            revision: 1,
            created_by: String::new(),
            create_time: 0,
            update_time: 0,
            stage_update_time: 0,
            evaluations: Vec::new(),
            deployments: Vec::new(),
        }
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_cached() {
        let cache = VersionCache::default();
        let generation = cache.generation("m");
        cache.invalidate(["m"]);
        cache.insert(generation, version("m", 1));
        assert!(cache.get("m", 1).is_none());
        cache.insert(cache.generation("m"), version("m", 1));
        assert!(cache.get("m", 1).is_some());
        cache.invalidate(["m"]);
        assert!(cache.get("m", 1).is_none());
    }
}
