//! The dashboard in a real browser: headless Debian Chromium driven by
//! chromedriver (WebDriver) through fantoccini, against a real master and
//! agents. Chromium is told to accept the master's certificate
//! (`--ignore-certificate-errors`, `acceptInsecureCerts`): the cluster's own
//! CA is not in the test machine's trust store. Only here, never in the
//! product.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use wasmlet_api::{Phase, Workload};
use wasmlet_tests::{Agent, Master, free_port, wait_for};

use crate::cluster::create_sensor;
use crate::rollouts::{apply, web};
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(60);
/// WebDriver's codes of the Enter and Tab keys.
const ENTER: &str = "\u{E007}";
const TAB: &str = "\u{E004}";
/// The page shows the sign-in form alone (visible as rendered, not only by attribute).
const SIGNED_OUT: &str = "return document.getElementById('signin').checkVisibility() && !document.getElementById('nav').checkVisibility() \
     && document.getElementById('page').childElementCount === 0";
/// The page shows the dashboard, and no sign-in form.
const SIGNED_IN: &str = "return !document.getElementById('signin').checkVisibility() && document.getElementById('nav').checkVisibility()";

/// A headless Chromium under its own chromedriver on a free loopback port;
/// both (and every process Chromium started) are stopped on drop.
struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        Self::start_with(&[])
    }

    /// A browser with more command-line switches for Chromium.
    fn start_with(switches: &[&str]) -> Browser {
        let port = free_port();
        let profile = tempfile::Builder::new().prefix("wasmlet-chromium-").tempdir().expect("a profile dir");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: the drop stops chromedriver and every Chromium process at once.
            .process_group(0)
            .spawn()
            .expect("chromedriver runs (make test-deps installs chromium and chromium-driver)");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let mut browser = Browser { runtime, client: None, driver, profile };
        let url = format!("http://127.0.0.1:{port}");
        wait_for(Duration::from_secs(20), "chromedriver to answer", || {
            reqwest::blocking::get(format!("{url}/status")).ok().filter(|r| r.status().is_success()).map(|_| ())
        });
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--ignore-certificate-errors",
            "--window-size=1280,1000",
        ]
        .map(String::from)
        .into();
        args.push(format!("--user-data-dir={}", browser.profile.path().display()));
        args.extend(switches.iter().map(|s| s.to_string()));
        let capabilities = json!({
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": args,
            },
        });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client =
            browser.runtime.block_on(ClientBuilder::new(connector).capabilities(capabilities).connect(&url)).expect("a Chromium session");
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    fn goto(&self, url: &str) {
        self.runtime.block_on(self.client().goto(url)).unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Runs `script` (a function body: `return …`; a returned promise is awaited) in the page.
    fn run(&self, script: &str) -> Value {
        self.runtime.block_on(self.client().execute(script, vec![])).unwrap_or_else(|e| panic!("running {script}: {e}"))
    }

    /// Polls `script` until it returns something other than null, false or undefined.
    fn wait(&self, what: &str, script: &str) -> Value {
        wait_for(WAIT, what, || Some(self.run(script)).filter(|v| !v.is_null() && *v != Value::Bool(false)))
    }

    /// With `WASMLET_DASHBOARD_SCREENSHOTS=DIR`, saves what the browser shows as `DIR/NAME.png` (to look at the pages).
    fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("WASMLET_DASHBOARD_SCREENSHOTS") else { return };
        let png = self.runtime.block_on(self.client().screenshot()).expect("a screenshot");
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).expect("writing the screenshot");
    }

    /// Sends `keys` to the element that has the focus, as typed.
    fn press(&self, keys: &str) {
        let focused = self.runtime.block_on(self.client().active_element()).expect("a focused element");
        self.runtime.block_on(focused.send_keys(keys)).unwrap_or_else(|e| panic!("pressing {keys:?}: {e}"));
    }

    fn click(&self, css: &str) {
        let element = self
            .runtime
            .block_on(self.client().wait().at_most(WAIT).for_element(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        self.runtime.block_on(element.click()).unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self
            .runtime
            .block_on(self.client().wait().at_most(WAIT).for_element(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        self.runtime.block_on(element.send_keys(text)).unwrap_or_else(|e| panic!("typing into {css}: {e}"));
    }

    /// Reloads the page and waits for the new document to be signed in again (from the tab's session).
    fn reload(&self) {
        self.run("window.__old = true; setTimeout(() => location.reload(), 0)");
        self.wait("the page after a reload", &format!("if (window.__old !== undefined) return false; {SIGNED_IN}"));
    }

    /// Opens the dashboard of `master` and signs in with `token` through the form.
    fn sign_in(&self, master: &Master, token: &str) {
        self.goto(&format!("{}/ui/", master.url));
        self.type_into("#token", token);
        self.click("#signin button[type=submit]");
        self.wait("the signed-in page", SIGNED_IN);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), client.close()).await });
        }
        let group = rustix::process::Pid::from_raw(self.driver.id() as i32);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.driver.wait();
    }
}

fn join(master: &Master, name: &str) -> Agent {
    Agent::start(&["--master", &master.url, "--join-token", &master.join_token, "--name", name, "--sample-interval", "500ms"])
        .expect("agent starts")
}

fn viewer_token(master: &Master) -> String {
    let out = master.command(&["token", "create", "--role", "viewer", "--ttl", "1h"]);
    assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().next().expect("a token").trim().to_string()
}

fn wait_running(master: &Master, workload: &str, count: usize) -> Vec<wasmlet_api::Instance> {
    wait_for(WAIT, &format!("{count} running instances of {workload}"), || {
        let running: Vec<_> =
            master.instances().into_iter().filter(|i| i.spec.workload == workload && i.status.phase == Phase::Running).collect();
        (running.len() == count).then_some(running)
    })
}

/// Whether the page shows node `name` Ready.
fn ready_script(name: &str) -> String {
    format!("const row = document.querySelector('tr[data-node=\"{name}\"]'); return row !== null && row.dataset.ready === 'True';")
}

#[test]
fn a_signed_out_page_asks_for_a_token_and_no_url_carries_it() {
    let master = Master::start(&[]).expect("master starts");
    let viewer = viewer_token(&master);

    // The files are public and locked down; the API is not.
    let anonymous = master.anonymous().build().expect("client");
    let page = anonymous.get(format!("{}/ui/", master.url)).send().expect("GET /ui/");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().expect("csp").to_string();
    for directive in ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "connect-src 'self'"] {
        assert!(csp.contains(directive), "{csp} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert_eq!(anonymous.get(master.api("/nodes")).send().expect("GET /nodes").status(), 401);
    assert_eq!(anonymous.get(master.api("/nodes/x/usage-history")).send().expect("GET history").status(), 401);

    let browser = Browser::start();
    browser.goto(&format!("{}/ui/", master.url));
    browser.wait("the sign-in form", &format!("{SIGNED_OUT} && document.activeElement.id === 'token'"));
    let before = browser.run("return performance.getEntriesByType('resource').map(e => e.name)");
    assert!(!before.to_string().contains("/api/v1/nodes"), "nothing is listed before signing in: {before}");

    // A wrong token is refused on the form, and not kept.
    browser.type_into("#token", "not-a-token");
    browser.click("#signin button[type=submit]");
    browser.wait("the refusal", "return document.getElementById('signin-error').textContent.includes('does not accept')");
    assert_eq!(browser.run("return sessionStorage.length"), json!(0));

    browser.run("document.getElementById('token').value = ''");
    browser.type_into("#token", &viewer);
    browser.click("#signin button[type=submit]");
    browser.wait("the signed-in page", SIGNED_IN);
    for page in ["#/nodes", "#/workloads", "#/instances", "#/events", "#/"] {
        browser.run(&format!("location.hash = '{page}'"));
        browser.wait(&format!("page {page}"), "return document.querySelector('#page h1') !== null");
    }
    // A reload keeps the session (the tab's sessionStorage), and asks nothing again.
    browser.reload();
    assert_eq!(browser.run("return document.getElementById('role').textContent"), json!("viewer"));

    let seen = browser.run(
        "return { href: location.href, referrer: document.referrer, cookie: document.cookie, local: localStorage.length, \
         session: sessionStorage.getItem('wasmlet.token'), \
         urls: performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation')).map(e => e.name) }",
    );
    assert_eq!(seen["session"], json!(viewer), "the token is kept in the tab's sessionStorage");
    assert_eq!(seen["local"], json!(0));
    assert_eq!(seen["cookie"], json!(""));
    let urls = seen["urls"].as_array().expect("urls");
    assert!(urls.iter().any(|u| u.as_str().is_some_and(|u| u.contains("/api/v1/nodes"))), "the page called the API: {urls:?}");
    assert!(!seen.to_string().replace(&format!("\"session\":\"{viewer}\""), "").contains(&viewer), "the token is in a URL: {seen}");

    browser.click("#signout");
    browser.wait("the sign-in form again", SIGNED_OUT);
    assert_eq!(browser.run("return sessionStorage.getItem('wasmlet.token')"), Value::Null);
    drop(browser);

    // In a dark room: the system's dark mode turns the page dark.
    let dark = Browser::start_with(&["--force-dark-mode"]);
    dark.goto(&format!("{}/ui/", master.url));
    dark.wait("the sign-in form", SIGNED_OUT);
    assert_eq!(dark.run("return matchMedia('(prefers-color-scheme: dark)').matches"), json!(true));
    let background = dark.run("return getComputedStyle(document.body).backgroundColor");
    assert_eq!(background, json!("rgb(18, 21, 27)"), "the dark background");
    dark.screenshot("signin-dark");
}

#[test]
fn a_viewer_sees_nodes_live_plots_and_hand_offs_but_cannot_act() {
    let master = Master::start(&["--status-report-interval", "1s"]).expect("master starts");
    let a = join(&master, "node-a");
    let mut b = join(&master, "node-b");
    wait_for(WAIT, "2 Ready nodes", || (master.nodes().iter().filter(|n| n.is_ready()).count() == 2).then_some(()));
    create_sensor(&master, "sensor", "  replicas: 2\n  disconnect: {lostAfter: 2s, stopOnAgentAfter: 1s}\n");
    let running = wait_running(&master, "sensor", 2);
    let on_b = running.iter().find(|i| i.spec.node == "node-b").expect("a replica on node-b (replicas spread)").metadata.name.clone();
    let viewer = viewer_token(&master);

    let browser = Browser::start();
    browser.sign_in(&master, &viewer);
    // The overview's figures, in this browser, for a load of the overview by a signed-in tab:
    // bytes over the wire (no cache: the test's browser keeps none under a certificate it was told to accept),
    // the first render, and when the cluster's figures showed.
    browser.reload();
    browser.wait("the overview's node count", "const n = document.getElementById('nodes-ready'); return n && n.textContent === '2'");
    let figures = browser.run(
        "const nav = performance.getEntriesByType('navigation')[0]; \
         const res = performance.getEntriesByType('resource'); \
         const mine = res.filter(e => e.name.includes('/ui/')); \
         const api = res.filter(e => e.name.includes('/api/v1/')); \
         const fcp = performance.getEntriesByName('first-contentful-paint')[0]; \
         return { assetBytes: nav.transferSize + mine.reduce((s, e) => s + e.transferSize, 0), \
                  assetBodyBytes: nav.decodedBodySize + mine.reduce((s, e) => s + e.decodedBodySize, 0), \
                  assetFiles: 1 + mine.length, files: mine.map(e => e.name.split('/ui/')[1]), apiBytes: api.reduce((s, e) => s + e.transferSize, 0), \
                  firstContentfulPaintMs: fcp ? Math.round(fcp.startTime) : null, \
                  domContentLoadedMs: Math.round(nav.domContentLoadedEventEnd), \
                  clusterShownMs: Math.round(performance.getEntriesByName('wasmlet-overview-shown')[0].startTime) }",
    );
    println!("DASHBOARD_FIGURES {figures}");
    browser.screenshot("overview");
    assert!(figures["assetBytes"].as_u64().unwrap_or(0) > 0 && !figures["firstContentfulPaintMs"].is_null(), "{figures}");

    // The nodes page: both Ready, with the kernel their status reports; no admin buttons.
    browser.run("location.hash = '#/nodes'");
    for node in master.nodes() {
        let name = node.metadata.name.clone();
        browser.wait(&format!("{name} Ready on the page"), &ready_script(&name));
        let kernel = browser.run(&format!("return document.querySelector('tr[data-node=\"{name}\"] .kernel').textContent"));
        assert_eq!(kernel, json!(node.status.node_info.kernel_version), "{name}'s kernel on the page");
        assert!(!node.status.node_info.kernel_version.is_empty());
    }
    assert_eq!(browser.run("return document.querySelectorAll('.admin-action').length"), json!(0), "a viewer gets no admin buttons");
    browser.screenshot("nodes-viewer");
    // A forged admin action from the viewer's session is refused by the master.
    let forged = browser.run(
        "const auth = { Authorization: 'Bearer ' + sessionStorage.getItem('wasmlet.token') }; \
         return Promise.all([ \
           fetch('/api/v1/nodes/node-a/drain', { method: 'POST', headers: auth }).then(r => r.status), \
           fetch('/api/v1/workloads/sensor', { method: 'DELETE', headers: auth }).then(r => r.status), \
           fetch('/api/v1/nodes/node-a/cordon', { method: 'POST', headers: auth }).then(r => r.status) ])",
    );
    assert_eq!(forged, json!([403, 403, 403]));
    assert!(master.nodes().iter().all(|n| !n.spec.unschedulable), "nothing was cordoned");
    assert_eq!(wait_running(&master, "sensor", 2).len(), 2, "nothing was deleted");

    // One node's page: CPU and memory plots from the master's usage history.
    browser.run("location.hash = '#/nodes/node-a'");
    let points = browser.wait(
        "CPU and memory plots with two points",
        "const c = document.getElementById('plot-cpu'), m = document.getElementById('plot-memory'); \
         return c && m && Number(c.dataset.points) >= 2 && Number(m.dataset.points) >= 2 \
           && c.querySelector('polyline') && m.querySelector('polyline') ? [c.dataset.points, m.dataset.points] : null",
    );
    println!("plotted samples (cpu, memory): {points}");
    browser.screenshot("node");
    browser.run("document.getElementById('plots').scrollIntoView()");
    browser.screenshot("node-plots");
    let history: Value = master.get_json("/nodes/node-a/usage-history").expect("usage history");
    assert!(history["samples"].as_array().is_some_and(|s| s.len() >= 2), "{history}");

    // kill -9 node-b: the open page turns it NotReady without a reload, as soon as the master knows.
    browser.run("location.hash = '#/nodes'; window.__sameDocument = true;");
    browser.wait("node-b Ready on the page", &ready_script("node-b"));
    // The page notes the moment it shows the change (its own clock: the same machine's as the master's).
    browser.run(
        "window.__notReadyAt = null; \
         new MutationObserver(() => { const row = document.querySelector('tr[data-node=\"node-b\"]'); \
           if (row && row.dataset.ready !== 'True' && window.__notReadyAt === null) window.__notReadyAt = Date.now(); }) \
         .observe(document.getElementById('page'), { subtree: true, childList: true, attributes: true });",
    );
    b.kill();
    let killed = Instant::now();
    let shown_at = browser.wait("node-b NotReady on the open page", "return window.__notReadyAt");
    let shown_at = chrono::DateTime::from_timestamp_millis(shown_at.as_i64().expect("a time")).expect("a time");
    // When the master decided: the Ready condition's transition to Unknown.
    let node_b = master.nodes().into_iter().find(|n| n.metadata.name == "node-b").expect("node-b");
    let ready = node_b.status.conditions.iter().find(|c| c.kind == wasmlet_api::ConditionType::Ready).expect("a Ready condition");
    assert_ne!(ready.status, wasmlet_api::ConditionStatus::True, "the master marked node-b");
    let lag = shown_at - ready.last_transition_time;
    println!(
        "node-b NotReady on the open page {} ms after the master marked it (seen {:?} after the kill)",
        lag.num_milliseconds(),
        killed.elapsed()
    );
    assert!(lag < chrono::Duration::seconds(1), "the page showed NotReady {lag} after the master knew");
    assert_eq!(browser.run("return document.querySelector('tr[data-node=\"node-b\"]').classList.contains('bad-row')"), json!(true), "red");

    // Then its instance shows as handed off, on the same document.
    browser.run("location.hash = '#/instances'");
    browser.wait(
        "node-b's sensor instance Lost and handed off",
        &format!(
            "const row = document.querySelector('tr[data-instance=\"{on_b}\"]'); \
             return row && row.dataset.phase === 'Lost' && row.dataset.handedOff === 'true'"
        ),
    );
    assert_eq!(browser.run("return window.__sameDocument === true"), json!(true), "the page was never reloaded");
    browser.screenshot("instances-handed-off");
    wait_running(&master, "sensor", 2);
    drop(a);
}

#[test]
fn an_admin_drains_a_node_from_the_page_and_follows_a_log() {
    let master = Master::start(&[]).expect("master starts");
    let _a = join(&master, "node-a");
    let _b = join(&master, "node-b");
    wait_for(WAIT, "2 Ready nodes", || (master.nodes().iter().filter(|n| n.is_ready()).count() == 2).then_some(()));
    create_sensor(&master, "sensor", "  replicas: 2\n");
    let running = wait_running(&master, "sensor", 2);
    assert!(running.iter().any(|i| i.spec.node == "node-a"), "a replica on node-a to drain: {running:?}");

    let browser = Browser::start();
    browser.sign_in(&master, &master.admin_token);
    assert_eq!(browser.run("return document.getElementById('role').textContent"), json!("admin"));

    // The log view follows: new lines of the sensor appear as it writes them.
    let instance = running[0].metadata.name.clone();
    browser.run(&format!("location.hash = '#/instances/{instance}'"));
    let seqs = |text: &Value| -> Vec<u64> {
        text.as_str()
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.find('{').and_then(|i| serde_json::from_str::<Value>(&l[i..]).ok()))
            .filter_map(|v| v["seq"].as_u64())
            .collect()
    };
    let first = browser.wait(
        "sensor lines in the log view",
        "const t = document.getElementById('log').textContent; return t.includes('\"seq\"') ? t : null",
    );
    let last_seen = seqs(&first).into_iter().max().expect("a seq");
    let later = browser.wait(
        "newer sensor lines in the log view",
        &format!(
            "const t = document.getElementById('log').textContent; \
             const seqs = t.split('\\n').map(l => {{ const i = l.indexOf('{{'); try {{ return JSON.parse(l.slice(i)).seq; }} catch {{ return null; }} }}); \
             return seqs.some(s => s >= {last_seen} + 3) ? t : null"
        ),
    );
    let newer = seqs(&later);
    assert!(newer.windows(2).all(|w| w[0] < w[1]), "lines in order, none twice: {newer:?}");
    assert_eq!(browser.run("return document.getElementById('log-state').textContent"), json!("following"));
    browser.screenshot("instance-log");

    // Drain node-a from the nodes page, confirming in the dialog.
    browser.run("location.hash = '#/nodes'");
    browser.wait("admin buttons", "return document.querySelectorAll('.admin-action').length >= 4");
    // With the keyboard alone: Enter on the button, Tab from Cancel to Drain in the dialog, Enter.
    browser.run("document.querySelector('tr[data-node=\"node-a\"] button[data-action=\"drain\"]').focus()");
    browser.press(ENTER);
    browser.wait("the confirmation", "return document.getElementById('confirm').open");
    assert_eq!(browser.run("return document.activeElement.id"), json!("confirm-cancel"), "the safe choice has the focus");
    browser.screenshot("drain-confirmation");
    browser.press(TAB);
    assert_eq!(browser.run("return document.activeElement.id"), json!("confirm-ok"));
    browser.press(ENTER);
    let moved = wait_for(WAIT, "the sensor's instances to move off node-a", || {
        let running = wait_running(&master, "sensor", 2);
        running.iter().all(|i| i.spec.node == "node-b").then_some(running)
    });
    assert!(master.nodes().iter().any(|n| n.metadata.name == "node-a" && n.spec.unschedulable), "node-a is cordoned");
    assert!(moved.iter().all(|i| i.spec.node == "node-b"));
    browser.wait(
        "node-a shown as SchedulingDisabled with an Uncordon button",
        "const row = document.querySelector('tr[data-node=\"node-a\"]'); \
         return row && row.textContent.includes('SchedulingDisabled') && row.querySelector('button[data-action=\"uncordon\"]') !== null",
    );
    browser.screenshot("nodes-admin-drained");
    browser.run("location.hash = '#/workloads'");
    browser.wait("the workloads page", "return document.querySelector('tr[data-workload=\"sensor\"]') !== null");
    browser.screenshot("workloads-admin");

    // Scale and delete, each through its confirmation.
    browser.click("tr[data-workload='sensor'] button[data-action='scale']");
    browser
        .wait("the scale dialog", "return document.getElementById('confirm').open && document.getElementById('scale-replicas') !== null");
    browser.run("document.getElementById('scale-replicas').value = ''");
    browser.type_into("#scale-replicas", "1");
    browser.click("#confirm-ok");
    wait_for(WAIT, "sensor scaled to 1", || {
        let w: Workload = master.get_json("/workloads/sensor").ok()?;
        (w.spec.replicas == Some(1)).then_some(())
    });
    wait_running(&master, "sensor", 1);
    browser.wait(
        "one desired replica on the page",
        "return document.querySelector('tr[data-workload=\"sensor\"] td:nth-child(3)').textContent === '1'",
    );
    // Scaling made revision 2: the list and the workload's page show it, with the history of revisions.
    browser
        .wait("revision 2 in the list", "return document.querySelector('tr[data-workload=\"sensor\"] .rollout').textContent === 'rev 2'");
    browser.run("location.hash = '#/workloads/sensor'");
    browser.wait(
        "the rollout's history on the workload's page",
        "const r = document.getElementById('rollout'); \
         return r && r.dataset.rollout === 'Complete' && r.textContent.includes('one replica at a time') \
           && r.querySelectorAll('tbody tr').length === 2 && r.querySelector('tbody tr td').textContent === '2'",
    );
    browser.run("location.hash = '#/workloads'");
    browser.wait(
        "the workloads page",
        "return document.querySelector('tr[data-workload=\"sensor\"] button[data-action=\"delete\"]') !== null",
    );
    browser.click("tr[data-workload='sensor'] button[data-action='delete']");
    browser.wait("the delete confirmation", "return document.getElementById('confirm').open");
    browser.click("#confirm-cancel");
    std::thread::sleep(Duration::from_millis(300));
    assert!(master.get_json::<Workload>("/workloads/sensor").is_ok(), "Cancel deletes nothing");
    browser.click("tr[data-workload='sensor'] button[data-action='delete']");
    browser.wait("the delete confirmation", "return document.getElementById('confirm').open");
    browser.click("#confirm-ok");
    wait_for(WAIT, "sensor deleted", || master.get_json::<Workload>("/workloads/sensor").is_err().then_some(()));
    browser.wait("the workload gone from the page", "return document.querySelector('tr[data-workload=\"sensor\"]') === null");

    // A gray release: its step and weight in the list, its split and gates on the workload's page; then undone.
    master.upload_example("http-version").expect("upload");
    let steps = "    strategy: Canary\n    steps:\n    - {weight: 10, hold: 10m}\n";
    apply(&master, &web(1, 0, 1, steps));
    wait_running(&master, "web", 1);
    apply(&master, &web(2, 0, 1, steps));
    browser.wait(
        "the canary in the list",
        "return document.querySelector('tr[data-workload=\"web\"] .rollout')?.textContent === 'Canary step 1/2, 10%'",
    );
    browser.run("location.hash = '#/workloads/web'");
    browser.wait(
        "the split on the workload's page",
        "const r = document.getElementById('rollout'); \
         return r && r.dataset.rollout === 'Progressing' && r.textContent.includes('10% to revision 2, 90% to revision 1')",
    );
    let (status, body) = master.send_json(Method::POST, "/workloads/web/rollout/undo", &json!({})).expect("undo");
    assert_eq!(status, 200, "{body}");
    browser.wait(
        "the rollback on the page",
        "const r = document.getElementById('rollout'); return r && r.dataset.rollout === 'RolledBack' \
           && r.textContent.includes('rolled back to rev 1') && r.textContent.includes('undone by an admin')",
    );

    // On a phone-sized screen the pages fit the width (wide tables scroll inside their card).
    browser.runtime.block_on(browser.client().set_window_size(390, 844)).expect("a phone-sized window");
    for page in ["#/", "#/nodes", "#/nodes/node-a", "#/workloads", "#/workloads/sensor", "#/instances", "#/events"] {
        browser.run(&format!("location.hash = '{page}'"));
        browser.wait(&format!("{page} drawn"), "return document.querySelectorAll('#page .card, #page table, #page p').length > 0");
        let width = browser.run("return [document.documentElement.scrollWidth, document.documentElement.clientWidth]");
        assert!(width[0].as_u64() <= width[1].as_u64(), "{page} is wider than a phone's screen: {width}");
    }
    browser.run("location.hash = '#/nodes'");
    browser.screenshot("nodes-phone");
}

/// Three masters on etcd: the agent reports to one, yet every master holds the
/// node's usage history (each applies every Node status from the store's
/// watch); killing the one it reported to, the others' plots go on with the
/// samples from before.
#[test]
fn every_master_of_three_holds_the_usage_history_and_keeps_it_through_a_failover() {
    let etcd = wasmlet_tests::EtcdCluster::start(3).expect("etcd starts");
    let endpoints = etcd.endpoints();
    let mut masters: Vec<Master> = (0..3)
        .map(|_| {
            Master::start(&["--store", "etcd", "--etcd-endpoints", &endpoints, "--etcd-prefix", "/usage", "--status-report-interval", "1s"])
                .expect("a master starts")
        })
        .collect();
    let urls: Vec<&str> = masters.iter().map(|m| m.url.as_str()).collect();
    let list = urls.join(",");
    let _agent = Agent::start(&["--master", &list, "--join-token", &masters[0].join_token, "--name", "edge", "--sample-interval", "500ms"])
        .expect("agent starts");
    let samples = |master: &Master| -> Vec<String> {
        master
            .get_json::<Value>("/nodes/edge/usage-history")
            .ok()
            .and_then(|h| h["samples"].as_array().map(|s| s.iter().filter_map(|s| s["time"].as_str().map(String::from)).collect()))
            .unwrap_or_default()
    };
    for master in &masters {
        wait_for(WAIT, "two samples on every master", || (samples(master).len() >= 2).then_some(()));
    }
    let before = samples(&masters[1]);
    masters[0].kill();
    wait_for(WAIT, "newer samples on the masters left, the older ones kept", || {
        let after = samples(&masters[1]);
        (after.len() >= before.len() + 2 && after.starts_with(&before[..1])).then_some(())
    });
    assert!(samples(&masters[2]).len() >= before.len() + 2);
}
