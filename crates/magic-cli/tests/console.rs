//! The operator console in a real headless browser (Debian's chromium driven through
//! chromedriver's WebDriver HTTP API), plus its security rules over plain HTTP.
//!
//! The browser runs with JavaScript disabled: every step (login, navigation, the rollback
//! confirmation) must work without it. `MAGIC_CONSOLE_SCREENSHOTS=docs/console` saves
//! screenshots of the main pages there.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{code, contract, write_controller, Server, ADMIN_KEY};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn find(bin: &[&str]) -> Option<PathBuf> {
    bin.iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| {
            bin.iter().find_map(|b| {
                let name = std::path::Path::new(b).file_name()?;
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(name))
                        .find(|p| p.is_file())
                })
            })
        })
}

impl Browser {
    async fn start() -> Option<Browser> {
        let (Some(driver_bin), Some(chromium)) = (
            find(&["/usr/bin/chromedriver"]),
            find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]),
        ) else {
            eprintln!("SKIP: chromium / chromedriver are not installed (apt-get install chromium chromium-driver)");
            return None;
        };
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1200,900", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                // No JavaScript at all: the console must work without it.
                "prefs": {"profile.managed_default_content_settings.javascript": 2}
            }
        }}});
        let mut driver = driver;
        let resp: Value = match http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
        {
            Ok(r) => r.json().await.expect("session json"),
            Err(e) => {
                let _ = driver.kill();
                panic!("new session: {e}");
            }
        };
        let Some(session) = resp["value"]["sessionId"].as_str().map(str::to_string) else {
            let _ = driver.kill();
            panic!("no session: {resp}");
        };
        Some(Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        assert!(
            v["value"].get("error").is_none(),
            "webdriver {path}: {}",
            v["value"]
        );
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page source once it contains `needle` (after a click starts a navigation).
    async fn wait_text(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let page = self.source().await;
            if page.contains(needle) {
                return page;
            }
            assert!(Instant::now() < deadline, "waiting for {needle:?}: {page}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URL once it contains `needle`.
    async fn wait_url(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let url = self.url().await;
            if url.contains(needle) {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for URL {needle:?}: {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("element {css}: {v}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Save a screenshot as `<dir>/<name>.png` when `MAGIC_CONSOLE_SCREENSHOTS` names a dir.
    async fn screenshot(&self, name: &str) {
        eprintln!("page {name}: {} bytes", self.source().await.len());
        let Ok(dir) = std::env::var("MAGIC_CONSOLE_SCREENSHOTS") else {
            return;
        };
        use base64::Engine as _;
        let png = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("png");
        let dir = common::repo_root().join(dir);
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), bytes).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn deploy(server: &Server, dir: &std::path::Path) {
    let out = server.cli(&["deploy", dir.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_versions(root: &std::path::Path) -> (PathBuf, PathBuf) {
    let body = "        self.log.info(\"hello from the console test\", n=input.get(\"n\"))\n        return {\"greeting\": \"hi\"}";
    let v1 = root.join("v1");
    write_controller(
        &v1,
        &contract(
            "ConsoleDemo",
            "1.0.0",
            "greeting",
            "capabilities:\n  - cache:read: { prefix: \"greet:\" }\n",
        ),
        &code("ConsoleDemo", body),
    );
    let v2 = root.join("v2");
    write_controller(
        &v2,
        &contract(
            "ConsoleDemo",
            "1.1.0",
            "greeting",
            "capabilities:\n  - cache:read: { prefix: \"g\" }\n  - fs:temp: { size: 1M }\nresources:\n  timeout: 10s\n",
        ),
        &code("ConsoleDemo", body),
    );
    (v1, v2)
}

async fn active_version(server: &Server) -> String {
    let (status, body) = server
        .get("/api/admin/controllers/ConsoleDemo", Some(ADMIN_KEY))
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["active_version"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start(&[]);
    let url = |p: &str| format!("{}{p}", server.url);

    // Unauthenticated: redirected to the login page, which remembers where we were going.
    browser.goto(&url("/console/controllers")).await;
    let here = browser.url().await;
    assert!(here.contains("/console/login?next="), "{here}");
    browser.screenshot("login").await;

    // A wrong key is refused on the page.
    browser.type_into("#credential", "mk_wrong").await;
    browser.click("button[type=submit]").await;
    browser.wait_text("Sign-in failed").await;

    // Log in with the admin key.
    browser.type_into("#credential", ADMIN_KEY).await;
    browser.click("form.login button[type=submit]").await;
    browser.wait_text("Signed in as").await;
    assert!(browser.url().await.ends_with("/console/controllers"));

    // Deploy two versions through the CLI; the console shows them.
    let tmp = tempfile::tempdir().expect("tmp");
    let (v1, v2) = write_versions(tmp.path());
    deploy(&server, &v1);
    deploy(&server, &v2);
    browser.goto(&url("/console/controllers")).await;
    let page = browser.source().await;
    assert!(page.contains("ConsoleDemo"), "{page}");
    assert!(page.contains("<b>1.1.0</b>"), "{page}");
    browser.screenshot("controllers").await;

    // Execute a few times (one bad input for the error chart).
    let mut request_id = String::new();
    for n in 0..5 {
        let (status, _, body) = server
            .post("/api/execute/ConsoleDemo", &format!("{{\"n\": {n}}}"))
            .await;
        assert_eq!(status, 200, "{body}");
        request_id = body["request_id"].as_str().expect("request id").to_string();
    }
    let (status, _, _) = server
        .post("/api/execute/ConsoleDemo", "{\"n\": \"x\"}")
        .await;
    assert_eq!(status, 400);

    // The controller page: versions, the contract, the capability diff 1.0.0 → 1.1.0.
    browser
        .click("a[href='/console/controllers/ConsoleDemo']")
        .await;
    let page = browser.source().await;
    assert!(page.contains("Capability diff"), "{page}");
    assert!(
        page.contains("<b>added</b> <span class=\"cap\">fs:temp size"),
        "{page}"
    );
    assert!(
        page.contains("<b>widened</b> <span class=\"cap\">cache:read prefix"),
        "{page}"
    );
    browser.screenshot("controller").await;

    // Executions: charts and the recent list, then one execution's detail.
    browser
        .goto(&url("/console/executions?controller=ConsoleDemo"))
        .await;
    let page = browser.source().await;
    assert!(page.contains("<svg"), "charts are inline SVG");
    assert!(
        page.len() < 50_000,
        "executions page is {} bytes",
        page.len()
    );
    assert!(page.contains(&request_id), "{page}");
    assert!(
        page.contains("E1002"),
        "the failed execution is listed with its code"
    );
    browser.screenshot("executions").await;
    browser
        .click(&format!("a[href='/console/executions/{request_id}']"))
        .await;
    let page = browser.wait_text("Log lines").await;
    assert!(
        page.contains("hello from the console test"),
        "log line: {page}"
    );
    assert!(page.contains("execution_start"), "{page}");
    assert!(page.contains("execution_complete"), "{page}");
    browser.screenshot("execution").await;

    // Audit: search by request ID; verify the chain.
    browser
        .goto(&url(&format!("/console/audit?request_id={request_id}")))
        .await;
    let page = browser.source().await;
    assert!(page.contains("execution_complete"), "{page}");
    assert!(!page.contains(">deploy<"), "filtered to one request");
    browser.click("form.search button[type=submit]").await;
    browser.wait_text("Intact as of").await;
    browser.screenshot("audit").await;

    // Health.
    browser.goto(&url("/console/health")).await;
    let page = browser.source().await;
    assert!(page.contains("Isolation layers"), "{page}");
    assert!(page.contains("database"), "{page}");
    browser.screenshot("health").await;

    // Roll back with confirmation.
    browser.goto(&url("/console/controllers/ConsoleDemo")).await;
    browser
        .click("a[href='/console/controllers/ConsoleDemo/rollback?to=1.0.0']")
        .await;
    let page = browser.wait_text("Roll back ConsoleDemo?").await;
    assert!(page.contains("Roll back ConsoleDemo?"), "{page}");
    assert!(page.contains("<b>removed</b>"), "{page}");
    assert_eq!(
        active_version(&server).await,
        "1.1.0",
        "nothing changes before confirming"
    );
    browser.screenshot("rollback").await;
    browser.click("button.danger").await;
    browser.wait_text("Rolled back").await;
    assert_eq!(active_version(&server).await, "1.0.0");
    // The rollback is in the audit log, by the admin, via the console.
    let (_, body) = server
        .get("/api/admin/audit/records?last=5", Some(ADMIN_KEY))
        .await;
    assert!(
        body.contains("\"rollback\"") && body.contains("console"),
        "{body}"
    );

    // Sign out: the session is gone.
    browser.goto(&url("/console/controllers")).await;
    browser.click("header form button").await;
    browser.wait_url("/console/login").await;
    browser.goto(&url("/console/audit")).await;
    assert!(browser.url().await.contains("/console/login"));

    let _ = browser.cmd(reqwest::Method::DELETE, "", None).await;
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = Server::start(&[
        ("MAGIC_REQUIRE_APPROVAL", "1"),
        ("CONTROLLER_EXECUTION_MODE", "inline"),
    ]);
    let url = |p: &str| format!("{}{p}", server.url);
    let out = server.cli(&["keys", "create", "--role", "approver", "--name", "boss"]);
    assert!(out.status.success());
    let boss = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // The admin deploys a controller with capabilities: it waits for a second person.
    let tmp = tempfile::tempdir().expect("tmp");
    let (v1, _) = write_versions(tmp.path());
    let out = server.cli(&["deploy", v1.to_str().expect("path")]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("waits for approval"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The approver signs in, sees the request with its capability diff and approves it.
    browser.goto(&url("/console/approvals")).await;
    browser.type_into("#credential", &boss).await;
    browser.click("form.login button[type=submit]").await;
    let page = browser.wait_text("Deploy approvals").await;
    assert!(page.contains("ConsoleDemo 1.0.0"), "{page}");
    assert!(
        page.contains("<b>added</b> <span class=\"cap\">cache:read prefix"),
        "{page}"
    );
    browser.screenshot("approvals").await;
    browser.type_into("input[name=reason]", "looks fine").await;
    browser.click("button[value=approve]").await;
    browser.wait_text("approved.").await;
    assert_eq!(active_version(&server).await, "1.0.0");
    server.stop();
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf field")
        .to_string()
}

/// Sign in over plain HTTP the way a browser does: load the login page (its CSRF cookie and
/// hidden field), then post the form with both.
async fn sign_in(http: &reqwest::Client, base: &str, form: &[(&str, &str)]) -> reqwest::Response {
    let page = http
        .get(format!("{base}/console/login"))
        .send()
        .await
        .expect("login page");
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    let csrf = csrf_of(&page.text().await.expect("page"));
    let mut form = form.to_vec();
    form.push(("csrf", &csrf));
    http.post(format!("{base}/console/login"))
        .header("cookie", cookie)
        .form(&form)
        .send()
        .await
        .expect("login")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_security_rules() {
    let server = Server::start(&[("CONTROLLER_EXECUTION_MODE", "inline")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let (v1, v2) = write_versions(tmp.path());
    deploy(&server, &v1);
    deploy(&server, &v2);
    let http = no_redirects();
    let url = |p: &str| format!("{}{p}", server.url);

    // Unauthenticated pages redirect to the login page; the login never goes off-site.
    for p in [
        "/console",
        "/console/controllers",
        "/console/audit?x=1",
        "/console/health",
    ] {
        let r = http.get(url(p)).send().await.expect("get");
        let loc = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(r.status().is_redirection(), "{p}: {}", r.status());
        assert!(loc.starts_with("/console/"), "{p}: {loc}");
    }
    let r = sign_in(
        &http,
        &server.url,
        &[("credential", ADMIN_KEY), ("next", "//evil.example/")],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/controllers");
    let set_cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains(ADMIN_KEY),
        "the key never goes into the cookie"
    );
    let cookie = set_cookie.split(';').next().expect("pair").to_string();

    // With the session: pages load; a state-changing form without (or with a wrong) CSRF
    // token is refused and changes nothing.
    let page = http
        .get(url("/console/controllers/ConsoleDemo"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = page.text().await.expect("text");
    assert!(page.len() < 50_000, "page is {} bytes", page.len());
    let csrf = csrf_of(&page);
    for bad in [None, Some("0000"), Some("")] {
        let mut form = vec![("version", "1.0.0"), ("confirm", "yes")];
        if let Some(b) = bad {
            form.push(("csrf", b));
        }
        let r = http
            .post(url("/console/controllers/ConsoleDemo/rollback"))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 403, "csrf {bad:?}");
        assert!(r.text().await.expect("text").contains("CSRF"));
    }
    assert_eq!(active_version(&server).await, "1.1.0");
    // Without the confirmation step: refused.
    let r = http
        .post(url("/console/controllers/ConsoleDemo/rollback"))
        .header("cookie", &cookie)
        .form(&[("version", "1.0.0"), ("csrf", csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    assert_eq!(active_version(&server).await, "1.1.0");
    let r = http
        .post(url("/console/controllers/ConsoleDemo/rollback"))
        .header("cookie", &cookie)
        .form(&[
            ("version", "1.0.0"),
            ("confirm", "yes"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
    assert_eq!(active_version(&server).await, "1.0.0");

    // Roles: the API's permissions apply page by page (X-API-Key works too, no CSRF needed).
    let key = |role: &str| {
        let out = server.cli(&[
            "keys",
            "create",
            "--role",
            role,
            "--name",
            &format!("{role}-c"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (executor, auditor, operator) = (key("executor"), key("auditor"), key("operator"));
    // (key, path, expected status)
    let cases: &[(&str, &str, u16)] = &[
        (&executor, "/console/controllers", 403),
        (&executor, "/console/audit", 403),
        (&executor, "/console/health", 403),
        (&auditor, "/console/controllers", 200),
        (&auditor, "/console/audit", 200),
        (
            &auditor,
            "/console/controllers/ConsoleDemo/rollback?to=1.1.0",
            403,
        ),
        (&operator, "/console/audit", 403),
        (
            &operator,
            "/console/controllers/ConsoleDemo/rollback?to=1.1.0",
            200,
        ),
        (&operator, "/console/executions", 200),
        ("mk_not_a_key", "/console/controllers", 401),
    ];
    for (k, path, want) in cases {
        let r = http
            .get(url(path))
            .header("x-api-key", *k)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), *want, "{path}");
    }
    let r = http
        .post(url("/console/controllers/ConsoleDemo/rollback"))
        .header("x-api-key", &auditor)
        .form(&[("version", "1.1.0"), ("confirm", "yes")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let r = http
        .post(url("/console/controllers/ConsoleDemo/rollback"))
        .header("x-api-key", &operator)
        .form(&[("version", "1.1.0"), ("confirm", "yes")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
    assert_eq!(active_version(&server).await, "1.1.0");

    // Revoking the key a session was opened with ends the session.
    let r = sign_in(&http, &server.url, &[("credential", operator.as_str())]).await;
    let op_cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    let ok = http
        .get(url("/console/controllers"))
        .header("cookie", &op_cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status(), 200);
    let out = server.cli(&["keys", "revoke", "operator-c"]);
    assert!(out.status.success());
    let gone = http
        .get(url("/console/controllers"))
        .header("cookie", &op_cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(gone.status(), 401);

    // Logout needs the CSRF token, then the session is gone.
    let r = http
        .post(url("/console/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", "")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let r = http
        .post(url("/console/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 303);
    let r = http
        .get(url("/console/controllers"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert!(r.status().is_redirection());
    server.stop();
}
