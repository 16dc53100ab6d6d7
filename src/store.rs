//! The artifact store: immutable content-addressed blobs, create-only cache entries and run journals under one
//! prefix of any `object_store` URL, plus a local read cache.
//!
//! Layout under the prefix:
//! - `blobs/ab/abcdef…` — artifact bytes, addressed by BLAKE3; a directory artifact is a blob holding its canonical
//!   listing, whose files are blobs too.
//! - `cache/ab/KEY.json` — cache entry: the full key record and the output hashes. Written create-only, after
//!   every blob it names is stored, so a visible entry never names a missing or partial blob.
//! - `nodes/ID.json` — the last key each node name had, so `status` and `explain` can say what changed.
//! - `runs/RUN.json` — run journals: which outputs a run produced (kept by `gc` within the grace period).
//!
//! Every read is verified against its hash; a mismatch is reported as [`Corrupt`] and never handed to a stage.

use crate::error::StoreError;
use crate::key::{self, KeyRecord, Tree};
use bytes::Bytes;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, path::Path as ObjPath};
use rmdistill_stages::ArtifactKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One output of a cached node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OutputRef {
    pub hash: String,
    pub kind: ArtifactKind,
    /// Bytes (for a directory: of all its files).
    pub size: u64,
}

/// A cache entry: what a node with this key produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub v: u32,
    pub key: String,
    /// The node that first produced it (another node with an identical record shares the entry).
    pub node: String,
    pub record: KeyRecord,
    pub outputs: BTreeMap<String, OutputRef>,
    /// The stage's own summary (counts, metrics).
    pub summary: serde_json::Value,
    pub created: String,
    pub seconds: f64,
}

/// A blob whose bytes do not match its address (or that cannot be parsed as what it claims to be).
#[derive(Debug, thiserror::Error)]
#[error("corrupt blob {hash}: {detail}")]
pub struct Corrupt {
    pub hash: String,
    pub detail: String,
}

pub struct Store {
    os: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    /// For `file://` stores: the directory, so verified blobs can be read in place.
    local_root: Option<PathBuf>,
    /// Local working area: read cache, assembled directory artifacts, scratch space.
    local_dir: PathBuf,
    rt: tokio::runtime::Runtime,
    verified: Mutex<HashSet<String>>,
    /// One lock per directory artifact being assembled in this process.
    dir_locks: Mutex<std::collections::HashMap<String, Arc<Mutex<()>>>>,
    pub url: String,
}

/// Whether a local directory holds exactly the files of `tree` with their bytes.
fn tree_intact(dir: &Path, tree: &Tree) -> bool {
    key::hash_tree(dir).map(|t| t == *tree).unwrap_or(false)
}

fn store_err(what: &str, e: impl std::fmt::Display) -> anyhow::Error {
    let detail = e.to_string();
    // Object stores answer with long XML bodies; the code inside is what a user can act on.
    let hint = if detail.contains("NoSuchBucket") {
        "the bucket does not exist (create it, or fix the store url)"
    } else if detail.contains("AccessDenied")
        || detail.contains("403 Forbidden")
        || detail.contains("InvalidAccessKeyId")
        || detail.contains("SignatureDoesNotMatch")
    {
        "permission denied (check the credentials in the environment and the bucket policy)"
    } else {
        ""
    };
    let short: String = detail.split("<?xml").next().unwrap_or(&detail).trim_end_matches([':', ' ']).to_string();
    if hint.is_empty() {
        StoreError(format!("{what}: {short}")).into()
    } else {
        StoreError(format!("{what}: {hint}; {short}")).into()
    }
}

impl Store {
    /// Opens the store at `url`. A URL without a scheme, or `file://` with a relative path, is a directory relative
    /// to the working directory. `local_dir` holds the read cache and scratch files.
    pub fn open(url: &str, local_dir: &Path) -> anyhow::Result<Store> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| store_err("cannot start the I/O runtime", e))?;
        std::fs::create_dir_all(local_dir)
            .map_err(|e| store_err(&format!("cannot create {}", local_dir.display()), e))?;
        let local_dir = local_dir.canonicalize()?;
        let (os, prefix, local_root): (Arc<dyn ObjectStore>, ObjPath, Option<PathBuf>) =
            if let Some(rest) = url.strip_prefix("file://").or_else(|| (!url.contains("://")).then_some(url)) {
                let dir = PathBuf::from(rest);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| store_err(&format!("cannot create store directory {}", dir.display()), e))?;
                let dir = dir.canonicalize()?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| store_err(url, e))?;
                (Arc::new(fs), ObjPath::default(), Some(dir))
            } else if url.starts_with("memory://") {
                (Arc::new(object_store::memory::InMemory::new()), ObjPath::default(), None)
            } else {
                let parsed = url::Url::parse(url).map_err(|e| store_err(&format!("store url `{url}`"), e))?;
                let (os, prefix) = crate::remote::open(&parsed)?;
                (os, prefix, None)
            };
        Ok(Store {
            os,
            prefix,
            local_root,
            local_dir,
            rt,
            verified: Mutex::new(HashSet::new()),
            dir_locks: Mutex::new(Default::default()),
            url: url.to_string(),
        })
    }

    fn p(&self, rel: &str) -> ObjPath {
        if self.prefix.as_ref().is_empty() {
            ObjPath::from(rel)
        } else {
            ObjPath::from(format!("{}/{rel}", self.prefix))
        }
    }
    fn blob_path(&self, hash: &str) -> ObjPath {
        self.p(&format!("blobs/{}/{hash}", &hash[..2]))
    }
    fn entry_path(&self, key: &str) -> ObjPath {
        self.p(&format!("cache/{}/{key}.json", &key[..2]))
    }

    pub fn local_dir(&self) -> &Path {
        &self.local_dir
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Whether a blob is present (not whether it is intact: reads check that).
    pub fn has_blob(&self, hash: &str) -> anyhow::Result<bool> {
        self.exists(&self.blob_path(hash))
    }

    fn exists(&self, p: &ObjPath) -> anyhow::Result<bool> {
        match self.block_on(self.os.head(p)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(&format!("cannot read {p}"), e)),
        }
    }

    /// Stores the bytes of a local file as a blob (skipped when already present); returns (hash, size).
    pub fn put_file(&self, path: &Path) -> anyhow::Result<(String, u64)> {
        let (hash, size) = key::hash_file(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        if !self.has_blob(&hash)? {
            self.upload(path, &self.blob_path(&hash))?;
        }
        Ok((hash, size))
    }

    /// Uploads a file; small ones in one atomic put, large ones as a multipart upload that becomes visible only
    /// when complete.
    fn upload(&self, path: &Path, dest: &ObjPath) -> anyhow::Result<()> {
        let size = std::fs::metadata(path)?.len();
        const PART: usize = 16 << 20;
        self.block_on(async {
            if size <= PART as u64 {
                let data = tokio::fs::read(path).await?;
                self.os
                    .put(dest, PutPayload::from(data))
                    .await
                    .map_err(|e| store_err(&format!("cannot write {dest}"), e))?;
            } else {
                let mut up =
                    self.os.put_multipart(dest).await.map_err(|e| store_err(&format!("cannot write {dest}"), e))?;
                let mut f = tokio::fs::File::open(path).await?;
                use tokio::io::AsyncReadExt;
                let mut pending = Vec::new();
                loop {
                    let mut buf = vec![0u8; PART];
                    let mut filled = 0;
                    while filled < PART {
                        let n = f.read(&mut buf[filled..]).await?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                    if filled == 0 {
                        break;
                    }
                    buf.truncate(filled);
                    pending.push(up.put_part(PutPayload::from(buf)));
                    if pending.len() >= 4 {
                        for p in pending.drain(..) {
                            p.await.map_err(|e| store_err(&format!("cannot write {dest}"), e))?;
                        }
                    }
                    if filled < PART {
                        break;
                    }
                }
                for p in pending {
                    if let Err(e) = p.await {
                        let _ = up.abort().await;
                        return Err(store_err(&format!("cannot write {dest}"), e));
                    }
                }
                up.complete().await.map_err(|e| store_err(&format!("cannot complete {dest}"), e))?;
            }
            Ok::<_, anyhow::Error>(())
        })
    }

    pub fn put_bytes(&self, data: Vec<u8>) -> anyhow::Result<String> {
        let hash = blake3::hash(&data).to_hex().to_string();
        if !self.has_blob(&hash)? {
            let dest = self.blob_path(&hash);
            self.block_on(self.os.put(&dest, PutPayload::from(data)))
                .map_err(|e| store_err(&format!("cannot write {dest}"), e))?;
        }
        Ok(hash)
    }

    /// Stores a directory artifact: every file, then its listing. Returns (listing hash, total size).
    pub fn put_tree(&self, dir: &Path) -> anyhow::Result<(String, u64)> {
        let tree = key::hash_tree(dir)?;
        for f in &tree.files {
            if !self.has_blob(&f.hash)? {
                self.upload(&dir.join(&f.path), &self.blob_path(&f.hash))?;
            }
        }
        let size = tree.files.iter().map(|f| f.size).sum();
        Ok((self.put_bytes(tree.bytes())?, size))
    }

    /// Stores a node's output (file or directory).
    pub fn put_output(&self, path: &Path, kind: ArtifactKind) -> anyhow::Result<OutputRef> {
        let (hash, size) = match kind {
            ArtifactKind::File => self.put_file(path)?,
            ArtifactKind::Dir => self.put_tree(path)?,
        };
        Ok(OutputRef { hash, kind, size })
    }

    /// Reads a whole blob, verified.
    pub fn get_bytes(&self, hash: &str) -> anyhow::Result<Bytes> {
        let p = self.blob_path(hash);
        let data = self.block_on(async { self.os.get(&p).await?.bytes().await }).map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                anyhow::Error::new(Corrupt { hash: hash.into(), detail: "missing from the store".into() })
            }
            e => store_err(&format!("cannot read {p}"), e),
        })?;
        let got = blake3::hash(&data).to_hex().to_string();
        if got != hash {
            return Err(Corrupt {
                hash: hash.into(),
                detail: format!("its bytes hash to {got} ({} bytes)", data.len()),
            }
            .into());
        }
        Ok(data)
    }

    /// A local path holding the verified bytes of a file blob.
    pub fn materialize_file(&self, hash: &str) -> anyhow::Result<PathBuf> {
        if let Some(root) = &self.local_root {
            let path = root.join("blobs").join(&hash[..2]).join(hash);
            if !self.verified.lock().unwrap().contains(hash) {
                let (got, size) = match key::hash_file(&path) {
                    Ok(x) => x,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(Corrupt { hash: hash.into(), detail: "missing from the store".into() }.into());
                    }
                    Err(e) => return Err(store_err(&format!("cannot read {}", path.display()), e)),
                };
                if got != hash {
                    return Err(Corrupt {
                        hash: hash.into(),
                        detail: format!("its bytes hash to {got} ({size} bytes)"),
                    }
                    .into());
                }
                self.verified.lock().unwrap().insert(hash.to_string());
            }
            return Ok(path);
        }
        let cached = self.local_dir.join("blobs").join(hash);
        if cached.is_file() {
            if self.verified.lock().unwrap().contains(hash)
                || key::hash_file(&cached).map(|(h, _)| h == hash).unwrap_or(false)
            {
                self.verified.lock().unwrap().insert(hash.to_string());
                return Ok(cached);
            }
            let _ = std::fs::remove_file(&cached);
        }
        std::fs::create_dir_all(cached.parent().unwrap())?;
        let tmp = tempfile::NamedTempFile::new_in(cached.parent().unwrap())?;
        let p = self.blob_path(hash);
        let got = self.block_on(async {
            let mut stream = self.os.get(&p).await?.into_stream();
            let mut hasher = blake3::Hasher::new();
            let mut f = std::io::BufWriter::new(tmp.as_file());
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                f.write_all(&chunk)
                    .map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
            }
            f.flush().map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
            Ok::<_, object_store::Error>(hasher.finalize().to_hex().to_string())
        });
        let got = match got {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Corrupt { hash: hash.into(), detail: "missing from the store".into() }.into());
            }
            Err(e) => return Err(store_err(&format!("cannot read {p}"), e)),
        };
        if got != hash {
            return Err(Corrupt { hash: hash.into(), detail: format!("its bytes hash to {got}") }.into());
        }
        tmp.persist(&cached).map_err(|e| e.error)?;
        self.verified.lock().unwrap().insert(hash.to_string());
        Ok(cached)
    }

    /// Reads and parses a directory artifact's listing.
    pub fn tree(&self, hash: &str) -> anyhow::Result<Tree> {
        let data = self.get_bytes(hash)?;
        serde_json::from_slice(&data)
            .map_err(|e| Corrupt { hash: hash.into(), detail: format!("not a directory listing: {e}") }.into())
    }

    /// A local directory holding a verified copy of a directory artifact. Assembled in a private temporary
    /// directory and renamed into place, so a reader never sees a partial tree; a tree already in place is verified
    /// and reused, never removed while another node (or process) may be reading it.
    pub fn materialize_dir(&self, hash: &str) -> anyhow::Result<PathBuf> {
        let lock = self.dir_locks.lock().unwrap().entry(hash.to_string()).or_default().clone();
        let _held = lock.lock().unwrap();
        let trees = self.local_dir.join("trees");
        let dest = trees.join(hash);
        if dest.is_dir() && self.verified.lock().unwrap().contains(hash) {
            return Ok(dest);
        }
        let tree = self.tree(hash)?;
        if dest.is_dir() {
            if tree_intact(&dest, &tree) {
                self.verified.lock().unwrap().insert(hash.to_string());
                return Ok(dest);
            }
            // Damaged locally (not in the store): move it aside rather than delete it under a reader's feet.
            let aside = trees.join(format!(
                "{hash}.damaged.{}.{}",
                std::process::id(),
                chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
            ));
            let _ = std::fs::rename(&dest, &aside);
        }
        std::fs::create_dir_all(&trees)?;
        let tmp = tempfile::TempDir::new_in(&trees)?;
        for f in &tree.files {
            let src = self.materialize_file(&f.hash)?;
            let to = tmp.path().join(&f.path);
            std::fs::create_dir_all(to.parent().unwrap())?;
            if std::fs::hard_link(&src, &to).is_err() {
                std::fs::copy(&src, &to)?;
            }
        }
        match std::fs::rename(tmp.path(), &dest) {
            Ok(()) => {
                let _ = tmp.keep();
            }
            // Another process put the same tree in place first: use theirs once it checks out.
            Err(_) if dest.is_dir() && tree_intact(&dest, &tree) => {}
            Err(e) => return Err(anyhow::anyhow!("cannot place {}: {e}", dest.display())),
        }
        self.verified.lock().unwrap().insert(hash.to_string());
        Ok(dest)
    }

    pub fn materialize(&self, out: &OutputRef) -> anyhow::Result<PathBuf> {
        match out.kind {
            ArtifactKind::File => self.materialize_file(&out.hash),
            ArtifactKind::Dir => self.materialize_dir(&out.hash),
        }
    }

    /// Re-checks a blob reported corrupt and removes it if it still is (missing counts as bad), so that the node
    /// producing it stores it afresh. Returns false when the blob is intact now, e.g. because a concurrent
    /// recomputation has already replaced it.
    pub fn discard_if_corrupt(&self, hash: &str) -> anyhow::Result<bool> {
        self.verified.lock().unwrap().remove(hash);
        let _ = std::fs::remove_file(self.local_dir.join("blobs").join(hash));
        match self.get_bytes(hash) {
            Ok(_) => return Ok(false),
            Err(e) if e.downcast_ref::<Corrupt>().is_some() => {}
            Err(e) => return Err(e),
        }
        match self.block_on(self.os.delete(&self.blob_path(hash))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(store_err(&format!("cannot remove corrupt blob {hash}"), e)),
        }
    }

    pub fn get_entry(&self, key: &str) -> anyhow::Result<Option<Entry>> {
        self.get_json(&self.entry_path(key))
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, p: &ObjPath) -> anyhow::Result<Option<T>> {
        match self.block_on(async { self.os.get(p).await?.bytes().await }) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| store_err(&format!("{p} is not valid"), e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(&format!("cannot read {p}"), e)),
        }
    }

    /// Whether every blob an entry names (and every file of its directory outputs) is present.
    pub fn entry_complete(&self, e: &Entry) -> anyhow::Result<bool> {
        for o in e.outputs.values() {
            if !self.has_blob(&o.hash)? {
                return Ok(false);
            }
            if o.kind == ArtifactKind::Dir {
                let tree = match self.tree(&o.hash) {
                    Ok(t) => t,
                    Err(e) if e.downcast_ref::<Corrupt>().is_some() => return Ok(false),
                    Err(e) => return Err(e),
                };
                for f in &tree.files {
                    if !self.has_blob(&f.hash)? {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Writes an entry create-only. If another runner wrote one first, returns theirs (which wins, so that every
    /// reader sees one result per key); `replace` overwrites an entry whose blobs were found missing or corrupt.
    pub fn put_entry(&self, e: &Entry, replace: bool) -> anyhow::Result<Entry> {
        let p = self.entry_path(&e.key);
        let data = serde_json::to_vec_pretty(e)?;
        let mode = if replace { PutMode::Overwrite } else { PutMode::Create };
        let res = self.block_on(self.os.put_opts(
            &p,
            PutPayload::from(data.clone()),
            PutOptions { mode, ..Default::default() },
        ));
        match res {
            Ok(_) => Ok(e.clone()),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(self.get_entry(&e.key)?.unwrap_or_else(|| e.clone()))
            }
            Err(object_store::Error::NotImplemented { .. }) => {
                // Stores without conditional writes: check, then write (a race leaves two identical-key entries
                // with equal content for deterministic stages).
                if let Some(old) = self.get_entry(&e.key)?.filter(|_| !replace) {
                    return Ok(old);
                }
                self.block_on(self.os.put(&p, PutPayload::from(data)))
                    .map_err(|err| store_err(&format!("cannot write {p}"), err))?;
                Ok(e.clone())
            }
            Err(err) => Err(store_err(&format!("cannot write {p}"), err)),
        }
    }

    fn node_pointer(&self, scope: &str, node: &str) -> ObjPath {
        let id = blake3::hash(format!("{scope}\0{node}").as_bytes()).to_hex();
        self.p(&format!("nodes/{}.json", &id[..32]))
    }

    /// Remembers the key a node had at its last run (for `status`/`explain`); `scope` separates manifests.
    pub fn set_last_key(&self, scope: &str, node: &str, key: &str) -> anyhow::Result<()> {
        let p = self.node_pointer(scope, node);
        let v = serde_json::json!({"node": node, "key": key});
        self.block_on(self.os.put(&p, PutPayload::from(serde_json::to_vec(&v)?)))
            .map_err(|e| store_err(&format!("cannot write {p}"), e))?;
        Ok(())
    }

    pub fn last_key(&self, scope: &str, node: &str) -> anyhow::Result<Option<String>> {
        let v: Option<serde_json::Value> = self.get_json(&self.node_pointer(scope, node))?;
        Ok(v.and_then(|v| v.get("key").and_then(|k| k.as_str()).map(String::from)))
    }

    pub fn put_journal(&self, run_id: &str, journal: &serde_json::Value) -> anyhow::Result<()> {
        let p = self.p(&format!("runs/{run_id}.json"));
        self.block_on(self.os.put(&p, PutPayload::from(serde_json::to_vec_pretty(journal)?)))
            .map_err(|e| store_err(&format!("cannot write {p}"), e))?;
        Ok(())
    }

    /// Every object under a folder of the store: (path relative to the prefix, size, last modified).
    pub fn list(&self, folder: &str) -> anyhow::Result<Vec<(String, u64, chrono::DateTime<chrono::Utc>)>> {
        let base = self.p(folder);
        let prefix_len = self.prefix.parts().count();
        self.block_on(async {
            let mut out = Vec::new();
            let mut s = self.os.list(Some(&base));
            while let Some(m) = s.next().await {
                let m = m.map_err(|e| store_err(&format!("cannot list {base}"), e))?;
                let rel: Vec<String> = m.location.parts().skip(prefix_len).map(|p| p.as_ref().to_string()).collect();
                out.push((rel.join("/"), m.size, m.last_modified));
            }
            Ok(out)
        })
    }

    pub fn get_path_json<T: serde::de::DeserializeOwned>(&self, rel: &str) -> anyhow::Result<Option<T>> {
        self.get_json(&self.p(rel))
    }

    pub fn delete(&self, rel: &str) -> anyhow::Result<()> {
        let p = self.p(rel);
        match self.block_on(self.os.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(&format!("cannot delete {p}"), e)),
        }
    }
}
