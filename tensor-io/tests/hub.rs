//! Hub downloads without a network: a cache folder laid out as `huggingface_hub` lays it out,
//! built in a temporary folder, and resolved offline.

use std::path::{Path, PathBuf};

use tensor_io::hub::{repo_folder_name, Hub, HubConfig, RepoType};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const OLD_COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tensor-io-hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `blobs/<etag>` + `snapshots/<commit>/<file>` linking to it.
fn put(repo: &Path, commit: &str, file: &str, etag: &str, contents: &str) {
    let blob = repo.join("blobs").join(etag);
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, contents).unwrap();
    let link = repo.join("snapshots").join(commit).join(file);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    let depth = file.split('/').count() + 1; // snapshots/<commit>/<file parts>
    let target = format!("{}blobs/{etag}", "../".repeat(depth));
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, &link).unwrap();
    #[cfg(not(unix))]
    {
        let _ = target;
        std::fs::copy(&blob, &link).unwrap();
    }
}

fn reference(repo: &Path, name: &str, commit: &str) {
    let path = repo.join("refs").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, commit).unwrap();
}

/// A cache with `org/model` at `main` (two files, one nested), a tag at an older commit, and a
/// `.no_exist` marker.
fn fake_cache(name: &str) -> PathBuf {
    let cache = temp_dir(name);
    let repo = cache.join(repo_folder_name("org/model", RepoType::Model));
    put(
        &repo,
        COMMIT,
        "config.json",
        "etag-config",
        "{\"new\": true}",
    );
    put(&repo, COMMIT, "onnx/model.onnx", "etag-onnx", "onnx bytes");
    put(
        &repo,
        OLD_COMMIT,
        "config.json",
        "etag-old",
        "{\"new\": false}",
    );
    reference(&repo, "main", &format!("{COMMIT}\n"));
    reference(&repo, "v1.0", OLD_COMMIT);
    let no_exist = repo.join(".no_exist").join(COMMIT);
    std::fs::create_dir_all(&no_exist).unwrap();
    std::fs::write(no_exist.join("tokenizer.model"), "").unwrap();
    let ds = cache.join(repo_folder_name("org/data", RepoType::Dataset));
    put(&ds, COMMIT, "train.csv", "etag-csv", "a,b\n1,2\n");
    reference(&ds, "main", COMMIT);
    cache
}

fn offline(cache: &Path) -> Hub {
    Hub::new(HubConfig {
        cache_dir: cache.to_owned(),
        offline: true,
        token: None,
        endpoint: None,
        progress: false,
    })
}

#[test]
fn folder_names_follow_huggingface_hub() {
    assert_eq!(
        repo_folder_name("HuggingFaceTB/SmolLM2-135M", RepoType::Model),
        "models--HuggingFaceTB--SmolLM2-135M"
    );
    assert_eq!(repo_folder_name("gpt2", RepoType::Model), "models--gpt2");
    assert_eq!(repo_folder_name("a/b", RepoType::Dataset), "datasets--a--b");
    assert_eq!(repo_folder_name("a/b", RepoType::Space), "spaces--a--b");
}

#[test]
fn offline_resolves_from_the_cache() {
    let cache = fake_cache("resolve");
    let hub = offline(&cache);
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();

    let main = hub.fetch("org/model", None, "config.json").unwrap();
    assert!(main.ends_with(format!("snapshots/{COMMIT}/config.json")));
    assert_eq!(read(main), "{\"new\": true}");
    assert_eq!(
        read(
            hub.fetch("org/model", Some("main"), "onnx/model.onnx")
                .unwrap()
        ),
        "onnx bytes"
    );
    // A tag through refs/, and a commit hash with no ref at all.
    assert_eq!(
        read(hub.fetch("org/model", Some("v1.0"), "config.json").unwrap()),
        "{\"new\": false}"
    );
    assert_eq!(
        read(
            hub.fetch("org/model", Some(OLD_COMMIT), "config.json")
                .unwrap()
        ),
        "{\"new\": false}"
    );
    assert_eq!(
        read(
            hub.fetch_repo(RepoType::Dataset, "org/data", None, "train.csv")
                .unwrap()
        ),
        "a,b\n1,2\n"
    );
    assert!(hub
        .cached(RepoType::Model, "org/model", None, "missing.bin")
        .unwrap()
        .is_none());
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn offline_misses_are_clear_errors() {
    let cache = fake_cache("miss");
    let hub = offline(&cache);
    let err = |r: tensor_core::Result<PathBuf>| r.unwrap_err().to_string();

    let e = err(hub.fetch("org/model", None, "model.safetensors"));
    assert!(
        e.contains("offline") && e.contains("model.safetensors"),
        "{e}"
    );
    assert!(e.contains("not in the cached snapshot"), "{e}");
    let e = err(hub.fetch("org/model", None, "tokenizer.model"));
    assert!(e.contains("does not exist"), "{e}");
    let e = err(hub.fetch("org/model", Some("dev"), "config.json"));
    assert!(e.contains("revision \"dev\""), "{e}");
    let e = err(hub.fetch("org/other", None, "config.json"));
    assert!(e.contains("repository is not in the cache"), "{e}");
    // A snapshot link whose blob is gone is a miss, not a broken path.
    std::fs::remove_file(
        cache
            .join(repo_folder_name("org/model", RepoType::Model))
            .join("blobs/etag-onnx"),
    )
    .unwrap();
    assert!(hub.fetch("org/model", None, "onnx/model.onnx").is_err());
    // Names that would leave the cache are refused.
    for (repo, file, rev) in [
        ("org/model", "../refs/main", None),
        ("org/model", "/etc/passwd", None),
        ("org/model", "config.json", Some("../../x")),
        ("../model", "config.json", None),
        ("a/b/c", "config.json", None),
        ("", "config.json", None),
    ] {
        let e = err(hub.fetch(repo, rev, file));
        assert!(e.contains("hub.fetch"), "{repo} {file} {rev:?}: {e}");
    }
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn online_uses_the_cache_first_and_reports_download_failures() {
    let cache = fake_cache("online");
    // A closed port on this machine: any download attempt fails at once.
    let hub = Hub::new(HubConfig {
        cache_dir: cache.clone(),
        offline: false,
        token: None,
        endpoint: Some("http://127.0.0.1:9".into()),
        progress: false,
    });
    let p = hub.fetch("org/model", None, "config.json").unwrap();
    assert_eq!(std::fs::read_to_string(p).unwrap(), "{\"new\": true}");
    let e = hub
        .fetch("org/model", None, "weights.bin")
        .unwrap_err()
        .to_string();
    assert!(e.contains("downloading org/model@main/weights.bin"), "{e}");
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn config_from_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let c = HubConfig::from_env_with(env(&[("HOME", "/home/u")]));
    assert_eq!(c.cache_dir, PathBuf::from("/home/u/.cache/huggingface/hub"));
    assert!(!c.offline && c.progress && c.token.is_none() && c.endpoint.is_none());
    let c = HubConfig::from_env_with(env(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]));
    assert_eq!(c.cache_dir, PathBuf::from("/xdg/huggingface/hub"));
    let c = HubConfig::from_env_with(env(&[("HOME", "/home/u"), ("HF_HOME", "/hf")]));
    assert_eq!(c.cache_dir, PathBuf::from("/hf/hub"));
    let c = HubConfig::from_env_with(env(&[
        ("HF_HOME", "/hf"),
        ("HUGGINGFACE_HUB_CACHE", "/legacy"),
    ]));
    assert_eq!(c.cache_dir, PathBuf::from("/legacy"));
    let c = HubConfig::from_env_with(env(&[
        ("HF_HOME", "/hf"),
        ("HUGGINGFACE_HUB_CACHE", "/legacy"),
        ("HF_HUB_CACHE", "/cache"),
        ("HF_HUB_OFFLINE", "1"),
        ("HF_TOKEN", "hf_abc"),
        ("HF_ENDPOINT", "http://mirror"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "true"),
    ]));
    assert_eq!(c.cache_dir, PathBuf::from("/cache"));
    assert!(c.offline && !c.progress);
    assert_eq!(c.token.as_deref(), Some("hf_abc"));
    assert_eq!(c.endpoint.as_deref(), Some("http://mirror"));
    for (v, want) in [("ON", true), ("yes", true), ("0", false), ("off", false)] {
        let c = HubConfig::from_env_with(|k| (k == "HF_HUB_OFFLINE").then(|| v.to_string()));
        assert_eq!(c.offline, want, "{v}");
    }
    // The token file beside the cache.
    let home = temp_dir("token");
    std::fs::write(home.join("token"), "hf_from_file\n").unwrap();
    let home_s = home.to_str().unwrap().to_owned();
    let c = HubConfig::from_env_with(|k| (k == "HF_HOME").then(|| home_s.clone()));
    assert_eq!(c.token.as_deref(), Some("hf_from_file"));
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn module_fetch_reads_the_process_environment() {
    // The only test here that touches the process environment.
    let cache = fake_cache("env");
    std::env::set_var("HF_HUB_CACHE", &cache);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let p = tensor_io::hub::fetch("org/model", None, "config.json").unwrap();
    assert!(p.starts_with(&cache));
    let e = tensor_io::hub::fetch("org/model", None, "nope.bin")
        .unwrap_err()
        .to_string();
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::remove_var("HF_HUB_CACHE");
    std::fs::remove_dir_all(&cache).unwrap();
}
