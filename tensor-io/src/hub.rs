//! Files from the Hugging Face Hub, kept in the cache layout of the Python `huggingface_hub`
//! package, so that both share one cache:
//!
//! ```text
//! $HF_HUB_CACHE/models--org--name/
//!     blobs/<etag>                      the file contents
//!     refs/main                         the commit hash a branch or tag points to
//!     snapshots/<commit>/<filename>     a link to the blob
//! ```
//!
//! The cache folder is `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`,
//! else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. With
//! `HF_HUB_OFFLINE=1` nothing touches the network: files resolve from the cache (revision via
//! `refs/`, or a commit hash directly) or the call fails saying what is missing. Online, a file
//! already in the cache is returned as is; otherwise it is downloaded (with a progress bar unless
//! `HF_HUB_DISABLE_PROGRESS_BARS` is set), using `HF_TOKEN` or `$HF_HOME/token` and `HF_ENDPOINT`.
//!
//! ```no_run
//! let path = tensor_io::hub::fetch("HuggingFaceTB/SmolLM2-135M-Instruct", None, "tokenizer.json")?;
//! # Ok::<(), tensor_core::Error>(())
//! ```

use std::path::{Component, Path, PathBuf};

use tensor_core::{Error, Result};

/// The kind of Hub repository, which prefixes its cache folder name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RepoType {
    #[default]
    Model,
    Dataset,
    Space,
}

impl RepoType {
    fn to_hf(self) -> hf_hub::RepoType {
        match self {
            RepoType::Model => hf_hub::RepoType::Model,
            RepoType::Dataset => hf_hub::RepoType::Dataset,
            RepoType::Space => hf_hub::RepoType::Space,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
            RepoType::Space => "spaces",
        }
    }
}

/// `models--org--name`: a repository's folder in the cache.
pub fn repo_folder_name(repo_id: &str, repo_type: RepoType) -> String {
    format!("{}--{}", repo_type.prefix(), repo_id.replace('/', "--"))
}

/// Where and how to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// The hub cache folder (the one holding `models--*` folders).
    pub cache_dir: PathBuf,
    /// Never use the network (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Access token (`HF_TOKEN`, else the `token` file beside the cache).
    pub token: Option<String>,
    /// Hub address (`HF_ENDPOINT`); `None` is huggingface.co.
    pub endpoint: Option<String>,
    /// Show a progress bar while downloading.
    pub progress: bool,
}

/// `huggingface_hub`'s reading of a boolean environment variable.
fn env_true(v: Option<String>) -> bool {
    v.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

impl HubConfig {
    /// Read the process environment.
    pub fn from_env() -> Self {
        Self::from_env_with(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Read an environment given as a lookup function (for tests and embedding).
    pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> Self {
        let home_dir = get("HOME")
            .or_else(|| get("USERPROFILE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let hf_home = get("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            get("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home_dir.join(".cache"))
                .join("huggingface")
        });
        let cache_dir = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = get("HF_TOKEN").or_else(|| {
            let path = get("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        });
        Self {
            cache_dir,
            offline: env_true(get("HF_HUB_OFFLINE")),
            token,
            endpoint: get("HF_ENDPOINT"),
            progress: !env_true(get("HF_HUB_DISABLE_PROGRESS_BARS")),
        }
    }
}

/// A Hub client over one cache.
#[derive(Debug, Clone)]
pub struct Hub {
    config: HubConfig,
}

/// Fetch `filename` of model repository `repo_id` at `revision` (default `main`), configured from
/// the environment. Returns the path of the file in the cache.
pub fn fetch(repo_id: &str, revision: Option<&str>, filename: &str) -> Result<PathBuf> {
    Hub::from_env().fetch(repo_id, revision, filename)
}

fn check_repo_id(repo_id: &str) -> Result<()> {
    let ok = !repo_id.is_empty()
        && repo_id.split('/').count() <= 2
        && repo_id
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains("--"))
        && repo_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "hub.fetch",
            format!("{repo_id:?} is not a Hub repository id (\"name\" or \"org/name\")"),
        ))
    }
}

fn check_relative(what: &str, path: &str) -> Result<()> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "hub.fetch",
            format!("{what} {path:?} must be a relative path without '..'"),
        ))
    }
}

fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Self { config }
    }

    /// Configured from the environment (see the module docs).
    pub fn from_env() -> Self {
        Self::new(HubConfig::from_env())
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// A model file; see [`Hub::fetch_repo`].
    pub fn fetch(&self, repo_id: &str, revision: Option<&str>, filename: &str) -> Result<PathBuf> {
        self.fetch_repo(RepoType::Model, repo_id, revision, filename)
    }

    /// The cached file if present, else (online) a download into the cache. Offline, a file
    /// missing from the cache is an error naming the repository, revision and cache folder.
    pub fn fetch_repo(
        &self,
        repo_type: RepoType,
        repo_id: &str,
        revision: Option<&str>,
        filename: &str,
    ) -> Result<PathBuf> {
        let revision = revision.unwrap_or("main");
        if let Some(path) = self.cached(repo_type, repo_id, Some(revision), filename)? {
            return Ok(path);
        }
        if self.config.offline {
            return Err(self.offline_miss(repo_type, repo_id, revision, filename));
        }
        self.download(repo_type, repo_id, revision, filename)
    }

    /// Resolve a file from the cache alone: `Ok(None)` when it is not there.
    pub fn cached(
        &self,
        repo_type: RepoType,
        repo_id: &str,
        revision: Option<&str>,
        filename: &str,
    ) -> Result<Option<PathBuf>> {
        check_repo_id(repo_id)?;
        check_relative("filename", filename)?;
        let revision = revision.unwrap_or("main");
        check_relative("revision", revision)?;
        let Some(commit) = self.resolve_revision(repo_type, repo_id, revision)? else {
            return Ok(None);
        };
        let path = self
            .repo_dir(repo_type, repo_id)
            .join("snapshots")
            .join(&commit)
            .join(filename);
        // `exists` follows the snapshot's link to its blob: a dangling link is a miss.
        Ok(path.exists().then_some(path))
    }

    /// The folder of a repository in the cache.
    pub fn repo_dir(&self, repo_type: RepoType, repo_id: &str) -> PathBuf {
        self.config
            .cache_dir
            .join(repo_folder_name(repo_id, repo_type))
    }

    /// The commit a revision names in the cache: `refs/<revision>`, or the revision itself when it
    /// is a commit hash with a snapshot.
    fn resolve_revision(
        &self,
        repo_type: RepoType,
        repo_id: &str,
        revision: &str,
    ) -> Result<Option<String>> {
        let dir = self.repo_dir(repo_type, repo_id);
        let ref_path = dir.join("refs").join(revision);
        match std::fs::read_to_string(&ref_path) {
            Ok(s) => {
                let commit = s.trim().to_owned();
                check_relative("commit in refs", &commit)
                    .map_err(|e| Error::msg(format!("{}: {e}", ref_path.display())))?;
                return Ok(Some(commit));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    context: format!("reading {}", ref_path.display()),
                    source,
                })
            }
        }
        if is_commit_hash(revision) && dir.join("snapshots").join(revision).is_dir() {
            return Ok(Some(revision.to_owned()));
        }
        Ok(None)
    }

    fn offline_miss(
        &self,
        repo_type: RepoType,
        repo_id: &str,
        revision: &str,
        filename: &str,
    ) -> Error {
        let dir = self.repo_dir(repo_type, repo_id);
        let why = match self.resolve_revision(repo_type, repo_id, revision) {
            Ok(Some(commit)) => {
                if dir.join(".no_exist").join(&commit).join(filename).exists() {
                    format!("the Hub said {filename:?} does not exist at commit {commit}")
                } else {
                    format!("{filename:?} is not in the cached snapshot {commit}")
                }
            }
            Ok(None) if dir.is_dir() => {
                format!("revision {revision:?} is not in the cache (no refs/{revision})")
            }
            Ok(None) => format!(
                "the repository is not in the cache ({} is missing)",
                dir.display()
            ),
            Err(e) => e.to_string(),
        };
        Error::msg(format!(
            "hub: offline mode (HF_HUB_OFFLINE) and {repo_id}@{revision}/{filename} cannot be resolved from {}: {why}",
            self.config.cache_dir.display()
        ))
    }

    fn download(
        &self,
        repo_type: RepoType,
        repo_id: &str,
        revision: &str,
        filename: &str,
    ) -> Result<PathBuf> {
        let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(
            self.config.cache_dir.clone(),
        ))
        .with_progress(self.config.progress)
        .with_token(self.config.token.clone());
        if let Some(endpoint) = &self.config.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let api = builder
            .build()
            .map_err(|e| Error::msg(format!("hub: building the client: {e}")))?;
        let repo =
            hf_hub::Repo::with_revision(repo_id.to_owned(), repo_type.to_hf(), revision.to_owned());
        api.repo(repo).download(filename).map_err(|e| {
            Error::msg(format!(
                "hub: downloading {repo_id}@{revision}/{filename} into {}: {e}",
                self.config.cache_dir.display()
            ))
        })
    }
}
