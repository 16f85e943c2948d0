//! The HTTP client the CLI's remote commands share: authentication, the error envelope turned
//! into a one-line reason, and the multi-request operations (deploy upload, export).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;

use crate::Remote;

/// A configured client.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

/// Percent-encode one path segment.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for `remote`; the key falls back to the local server's generated admin key.
    pub fn new(remote: &Remote) -> anyhow::Result<Client> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let client_cert = match (env("MAGIC_CLIENT_CERT"), env("MAGIC_CLIENT_KEY")) {
            (Some(cert), Some(key)) => {
                let mut pem =
                    std::fs::read(&cert).with_context(|| format!("MAGIC_CLIENT_CERT {cert}"))?;
                pem.push(b'\n');
                pem.extend(std::fs::read(&key).with_context(|| format!("MAGIC_CLIENT_KEY {key}"))?);
                Some(
                    reqwest::Identity::from_pem(&pem)
                        .context("MAGIC_CLIENT_CERT/MAGIC_CLIENT_KEY")?,
                )
            }
            (None, None) => None,
            _ => bail!("MAGIC_CLIENT_CERT and MAGIC_CLIENT_KEY must be set together"),
        };
        let key = match &remote.api_key {
            Some(k) if !k.is_empty() => k.clone(),
            // A client certificate is the credential (mTLS).
            _ if client_cert.is_some() => String::new(),
            _ => {
                let file = remote.data_dir.join("admin.key");
                std::fs::read_to_string(&file)
                    .map(|k| k.trim().to_string())
                    .map_err(|_| {
                        anyhow!(
                            "no API key: set MAGIC_API_KEY (or run this next to the server's data dir, {} not found)",
                            file.display()
                        )
                    })?
            }
        };
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(330));
        if let Some(ca) = env("MAGIC_CA_CERT") {
            let pem = std::fs::read(&ca).with_context(|| format!("MAGIC_CA_CERT {ca}"))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("MAGIC_CA_CERT {ca}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(identity) = client_cert {
            builder = builder.identity(identity);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Client {
            http,
            base: remote.url.trim_end_matches('/').to_string(),
            key,
        })
    }

    /// Send a request whose success answer has no body (204).
    pub async fn send_empty(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<()> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await.map(|_| ())
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let req = if self.key.is_empty() {
            req
        } else {
            req.header("x-api-key", &self.key)
        };
        let response = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the runtime at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = response.status();
        let text = response.text().await.context("reading the response")?;
        if status.is_success() && text.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        let body: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
            anyhow!(
                "HTTP {status}: unexpected response: {}",
                text.chars().take(200).collect::<String>()
            )
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let err = &body["error"];
        let mut line = format!(
            "{} {} (HTTP {}, request {})",
            err["code"].as_str().unwrap_or("?"),
            err["message"].as_str().unwrap_or("request failed"),
            status.as_u16(),
            body["request_id"].as_str().unwrap_or("?")
        );
        if let Some(problems) = err["details"]["problems"].as_array() {
            for p in problems {
                line.push_str(&format!(
                    "; {}: {}: {}",
                    p["file"].as_str().unwrap_or(""),
                    p["field"].as_str().unwrap_or(""),
                    p["reason"].as_str().unwrap_or("")
                ));
            }
        }
        bail!(line)
    }

    /// Send a body-less request whose answer is JSON.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.request(method, format!("{}{path}", self.base)))
            .await
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// POST JSON to a path.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// Upload a package.
    pub async fn deploy(
        &self,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> anyhow::Result<serde_json::Value> {
        let files: BTreeMap<&str, String> = files
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    base64::engine::general_purpose::STANDARD.encode(v),
                )
            })
            .collect();
        self.post_json(
            "/api/admin/controllers",
            &serde_json::json!({ "files": files }),
        )
        .await
    }

    /// Execute a controller.
    pub async fn execute(
        &self,
        name: &str,
        input: &serde_json::Value,
        version: Option<&str>,
        request_id: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut url = format!("{}/api/execute/{}", self.base, segment(name));
        if let Some(v) = version {
            url.push_str(&format!("?version={}", segment(v)));
        }
        let mut req = self.http.post(url).json(input);
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        self.send(req).await
    }

    /// Write every version of `only` (or of every controller) under `output/NAME/VERSION/`.
    /// Returns how many versions were written.
    pub async fn export(&self, only: Option<&str>, output: &Path) -> anyhow::Result<usize> {
        let names: Vec<String> = match only {
            Some(n) => vec![n.to_string()],
            None => self
                .get("/api/admin/controllers")
                .await?
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect(),
        };
        let mut written = 0;
        for name in names {
            let status = self
                .get(&format!("/api/admin/controllers/{}", segment(&name)))
                .await?;
            for v in status["versions"].as_array().cloned().unwrap_or_default() {
                let version = v["version"].as_str().unwrap_or_default().to_string();
                let package = self
                    .get(&format!(
                        "/api/admin/controllers/{}/versions/{}/package",
                        segment(&name),
                        segment(&version)
                    ))
                    .await?;
                let dir = output.join(&name).join(&version);
                write_package(&dir, &package["files"])?;
                written += 1;
            }
            if let Some(active) = status["active_version"].as_str() {
                let file = output.join(&name).join(ACTIVE_FILE);
                std::fs::write(&file, format!("{active}\n"))
                    .with_context(|| format!("writing {}", file.display()))?;
            }
        }
        Ok(written)
    }

    /// Deploy every version of an exported tree (`DIR/NAME/VERSION/`, oldest version first),
    /// then make the version named in `DIR/NAME/ACTIVE` active again. Versions already
    /// deployed with the same content are left as they are. Returns
    /// `(versions deployed or unchanged, controllers)`.
    pub async fn import(&self, dir: &Path) -> anyhow::Result<(usize, usize)> {
        let plan = import_plan(dir)?;
        let (mut versions, controllers) = (0, plan.len());
        for (name, dirs, active) in plan {
            let mut last = None;
            for vdir in dirs {
                let files = magic_contract::read_package_dir(&vdir).map_err(|e| {
                    anyhow!(
                        "{} cannot be deployed: {}",
                        vdir.display(),
                        e.to_string().replace('\n', "; ")
                    )
                })?;
                let outcome = self.deploy(&files).await?;
                last = outcome["version"].as_str().map(str::to_string);
                versions += 1;
            }
            if let Some(active) = active {
                if last.as_deref() != Some(active.as_str()) {
                    self.post_json(
                        &format!("/api/admin/controllers/{}/rollback", segment(&name)),
                        &serde_json::json!({ "version": active }),
                    )
                    .await
                    .with_context(|| format!("making {name} {active} active again"))?;
                }
            }
        }
        Ok((versions, controllers))
    }
}

/// File beside an exported controller's versions naming its active version.
pub const ACTIVE_FILE: &str = "ACTIVE";

/// What `import` deploys: per controller folder (sorted), its version folders oldest first
/// and the version to leave active.
#[allow(clippy::type_complexity)]
fn import_plan(
    dir: &Path,
) -> anyhow::Result<Vec<(String, Vec<std::path::PathBuf>, Option<String>)>> {
    let mut plan = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut versions = Vec::new();
        for v in std::fs::read_dir(entry.path())?.flatten() {
            let path = v.path();
            if !path.join("contract.yaml").is_file() {
                continue;
            }
            let text = v.file_name().to_string_lossy().into_owned();
            let parsed = semver::Version::parse(text.trim_start_matches('v')).map_err(|_| {
                anyhow!("{} is not a version folder (NAME/VERSION/)", path.display())
            })?;
            versions.push((parsed, path));
        }
        if versions.is_empty() {
            bail!(
                "{} holds no version folders (NAME/VERSION/contract.yaml)",
                entry.path().display()
            );
        }
        versions.sort();
        let active = match std::fs::read_to_string(entry.path().join(ACTIVE_FILE)) {
            Ok(t) => Some(t.trim().trim_start_matches('v').to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {name}/{ACTIVE_FILE}")),
        };
        if let Some(a) = &active {
            if !versions.iter().any(|(v, _)| v.to_string() == *a) {
                bail!("{name}/{ACTIVE_FILE} names {a}, which is not exported");
            }
        }
        plan.push((name, versions.into_iter().map(|(_, p)| p).collect(), active));
    }
    if plan.is_empty() {
        bail!(
            "{} holds no exported controllers (NAME/VERSION/)",
            dir.display()
        );
    }
    Ok(plan)
}

/// Write exported files, refusing any path that would leave `dir` (the server is trusted, but
/// a file system is not the place to find out it was not).
fn write_package(dir: &Path, files: &serde_json::Value) -> anyhow::Result<()> {
    let files = files
        .as_object()
        .ok_or_else(|| anyhow!("malformed package in export"))?;
    for (rel, content) in files {
        let parts: Vec<&str> = rel.split('/').collect();
        if rel.starts_with('/')
            || parts
                .iter()
                .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            bail!("refusing to write exported file with path {rel:?}");
        }
        let path = parts.iter().fold(dir.to_path_buf(), |p, part| p.join(part));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(content.as_str().unwrap_or_default())
            .with_context(|| format!("decoding {rel}"))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("Invoice_Sync-1.0"), "Invoice_Sync-1.0");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(segment(".."), "..");
    }

    #[test]
    fn import_plans_oldest_version_first_and_keeps_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["1.10.0", "1.2.0", "2.0.0"] {
            let d = dir.path().join("A").join(v);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("contract.yaml"), "x").unwrap();
        }
        std::fs::write(dir.path().join("A").join(ACTIVE_FILE), "1.10.0\n").unwrap();
        let plan = import_plan(dir.path()).unwrap();
        assert_eq!(plan.len(), 1);
        let order: Vec<String> = plan[0]
            .1
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(order, ["1.2.0", "1.10.0", "2.0.0"]);
        assert_eq!(plan[0].2.as_deref(), Some("1.10.0"));
        // An ACTIVE that names a version not exported, a non-version folder, nothing at all.
        std::fs::write(dir.path().join("A").join(ACTIVE_FILE), "9.9.9").unwrap();
        assert!(import_plan(dir.path()).is_err());
        std::fs::write(dir.path().join("A").join(ACTIVE_FILE), "2.0.0").unwrap();
        let d = dir.path().join("A").join("latest");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("contract.yaml"), "x").unwrap();
        assert!(import_plan(dir.path()).is_err());
        assert!(import_plan(tempfile::tempdir().unwrap().path()).is_err());
    }

    #[test]
    fn export_refuses_paths_that_leave_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/x", "a//b", "a/./b", "a/../../b"] {
            let files = serde_json::json!({ bad: "eA==" });
            assert!(write_package(dir.path(), &files).is_err(), "{bad}");
        }
        let ok = serde_json::json!({ "sub/x.txt": "eA==" });
        write_package(dir.path(), &ok).unwrap();
        assert_eq!(std::fs::read(dir.path().join("sub/x.txt")).unwrap(), b"x");
    }
}
