#!/usr/bin/env python3
"""Walks Berth's web interface in headless Chromium, driven through chromedriver over the
W3C WebDriver protocol with nothing but the standard library (no selenium to install).

Argument: a JSON object with base (the server's URL), password (every test user's), repo,
old and new (the digests `repo:stable` pointed at, oldest first), screenshots (a
directory) and axe (the path of axe-core's axe.min.js, injected into every page checked).
Exits non-zero with a message at the first failed expectation; axe-core's violations are
gathered over the whole walk and reported together at its end.
"""

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [os.environ.get("BERTH_CHROMEDRIVER", "chromedriver"), f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while True:
            try:
                if self.call("GET", "/status")["ready"]:
                    break
            except (urllib.error.URLError, ConnectionError, KeyError):
                pass
            if time.time() > deadline:
                raise SystemExit("chromedriver did not start")
            time.sleep(0.2)
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": os.environ.get("BERTH_CHROMIUM", "/usr/bin/chromium"),
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--window-size=1280,900",
                        ],
                    },
                }
            }
        }
        self.sid = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise SystemExit(f"WebDriver {method} {path}: {e.code} {e.read()[:500]!r}")

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.sid}{path}", body)

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def current(self):
        return self.s("GET", "/url")

    def find(self, css):
        found = self.s("POST", "/element", {"using": "css selector", "value": css})
        if not isinstance(found, dict) or ELEMENT not in found:
            source = self.s("GET", "/source")
            raise SystemExit(f"no element {css!r} on {self.current()}: {found!r}\n{source[:3000]}")
        return found[ELEMENT]

    def find_all(self, css):
        return [e[ELEMENT] for e in self.s("POST", "/elements", {"using": "css selector", "value": css})]

    def click(self, css):
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css, text):
        el = self.find(css)
        self.s("POST", f"/element/{el}/clear", {})
        self.s("POST", f"/element/{el}/value", {"text": text})

    def text(self, css):
        return self.s("GET", f"/element/{self.find(css)}/text")

    def js(self, script, *args):
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def js_async(self, script, *args):
        return self.s("POST", "/execute/async", {"script": script, "args": list(args)})

    def size(self, width, height):
        self.s("POST", "/window/rect", {"width": width, "height": height})

    def color_scheme(self, scheme):
        self.s(
            "POST",
            "/goog/cdp/execute",
            {
                "cmd": "Emulation.setEmulatedMedia",
                "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
            },
        )

    def shot(self, directory, name):
        png = base64.b64decode(self.s("GET", "/screenshot"))
        with open(os.path.join(directory, name + ".png"), "wb") as f:
            f.write(png)

    def quit(self):
        try:
            self.s("DELETE", "")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def expect(cond, what):
    if not cond:
        raise SystemExit("FAILED: " + what)


def wait_for(cond, timeout=15):
    """A click that submits a form returns before the next page is there."""
    deadline = time.time() + timeout
    while True:
        try:
            if cond():
                return True
        except SystemExit:
            pass
        if time.time() > deadline:
            return False
        time.sleep(0.1)


def q(**kw):
    return urllib.parse.urlencode(kw)


AXE = None
VIOLATIONS = []
AXE_PAGES = 0
AXE_VERSION = None


def axe_check(d, what):
    """axe-core, injected through WebDriver (the pages' CSP forbids inline script; a script
    the driver evaluates is not the page's), must find no violation at all."""
    global AXE_VERSION
    AXE_VERSION = d.js(AXE + "\nreturn axe.version;")
    found = d.js_async(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ': ' + n.failureSummary)}))),"
        " e => done('axe failed: ' + e));"
    )
    expect(isinstance(found, list), f"{what}: {found}")
    global AXE_PAGES
    AXE_PAGES += 1
    if found:
        VIOLATIONS.append(f"{what}:\n" + json.dumps(found, indent=1))


def check_page(d, what):
    """What every page must be: no horizontal scrolling, every visible field labelled, and
    no accessibility violation axe-core knows of."""
    overflow = d.js(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
    )
    expect(overflow <= 0, f"{what}: scrolls sideways by {overflow}px")
    unlabelled = d.js(
        "return Array.from(document.querySelectorAll('input:not([type=hidden]), button'))"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
        " && !e.textContent.trim()).length;"
    )
    expect(unlabelled == 0, f"{what}: {unlabelled} unlabelled controls")
    expect(d.js("return !!document.querySelector('main h1');"), f"{what}: a main heading")
    axe_check(d, what)


def login(d, base, user, password):
    d.go(base + "/ui/repositories")
    expect("/ui/login" in d.current(), "anonymous visitors are sent to the login page")
    d.type("#user", user)
    d.type("#password", password)
    d.click("#login")
    expect(
        wait_for(lambda: d.current().startswith(base + "/ui/repositories")),
        f"{user} lands on repositories, not {d.current()}: {d.text('main')}",
    )


def main():
    global AXE
    a = json.loads(sys.argv[1])
    with open(a["axe"], encoding="utf-8") as f:
        AXE = f.read()
    base, repo, old, new, shots = a["base"], a["repo"], a["old"], a["new"], a["screenshots"]
    d = Driver()
    try:
        for width, label in ((1280, "desktop"), (375, "phone")):
            d.size(width, 900)
            for scheme in ("light", "dark"):
                d.color_scheme(scheme)
                d.go(base + "/ui/login")
                axe_check(d, f"login at {width}px, {scheme}")
                d.shot(shots, f"login-{label}-{scheme}")
        d.size(1280, 900)
        d.color_scheme("light")

        # Log in and find one repository among many.
        login(d, base, "maint", a["password"])
        d.type("#q", "svc-42")
        d.click("form.search button")
        names = lambda: [d.s("GET", f"/element/{e}/text") for e in d.find_all("#repositories a")]
        expect(wait_for(lambda: names() == ["team-a/svc-42"]), f"the search finds exactly svc-42: {names()}")
        axe_check(d, "repository search results")
        d.shot(shots, "repositories-search")
        d.type("#q", repo)
        d.click("form.search button")
        expect(wait_for(lambda: "q=team-a" in d.current()), "a second search")
        d.click("#repositories a")
        expect(wait_for(lambda: "/ui/repository?" in d.current()), "the repository page")
        tags = [d.s("GET", f"/element/{e}/text") for e in d.find_all("#tags a.tag")]
        expect(tags == ["1.10.0", "1.9.0-rc.1", "v1.2.0"], f"its versions, newest first: {tags}")
        d.shot(shots, "repository")
        d.click("a[href*='order=name']")
        expect(wait_for(lambda: "order=name" in d.current()), "the by-name tab")
        tags = [d.s("GET", f"/element/{e}/text") for e in d.find_all("#tags a.tag")]
        expect("stable" in tags and "hostile" in tags, f"all its tags: {tags}")
        d.shot(shots, "repository-by-name")

        # The image page: what the pusher wrote is text, never markup.
        d.go(base + "/ui/image?" + q(repository=repo, reference="hostile"))
        expect(d.js("return document.getElementById('pwned') === null;"), "label markup inert")
        expect(d.js("return document.getElementById('pwned2') === null;"), "annotation markup inert")
        expect(d.js("return document.title;") != "pwned", "no script ran")
        expect("<img src=x id=pwned>" in d.text("#labels"), "the label is shown as text")
        expect("<script id=pwned2>" in d.text("#annotations"), "the annotation is shown as text")
        d.shot(shots, "image")

        # Roll `stable` back, through the confirmation.
        d.go(base + "/ui/history?" + q(repository=repo, tag="stable"))
        d.shot(shots, "history")
        d.click("a.rollback")
        expect(wait_for(lambda: "/ui/rollback?" in d.current()), "a confirmation page first")
        expect(old in d.text("main"), "it names the target digest")
        axe_check(d, "rollback confirmation")
        d.shot(shots, "rollback-confirm")
        d.click("#confirm-rollback")
        expect(wait_for(lambda: old in d.text("#done")), "the history says where the tag points now")

        # Every page at phone width and in dark mode: no sideways scrolling, labelled.
        pages = {
            "repositories": "/ui/repositories",
            "tenants": "/ui/tenants",
            "repository": "/ui/repository?" + q(repository=repo),
            "image": "/ui/image?" + q(repository=repo, reference="stable"),
            "history": "/ui/history?" + q(repository=repo, tag="stable"),
        }
        for width, label in ((1280, "desktop"), (375, "phone")):
            d.size(width, 900)
            for scheme in ("light", "dark"):
                d.color_scheme(scheme)
                for name, path in pages.items():
                    d.go(base + path)
                    check_page(d, f"{name} at {width}px, {scheme}")
                    d.shot(shots, f"{name}-{label}-{scheme}")
                bg = d.js("return getComputedStyle(document.body).backgroundColor;")
                dark = bg == "rgb(13, 17, 23)"
                expect(dark == (scheme == "dark"), f"{scheme} scheme gives background {bg}")
        d.size(1280, 900)
        d.color_scheme("light")

        # Logout ends the session: its cookie, put back, no longer opens a page.
        cookie = [c for c in d.s("GET", "/cookie") if c["name"] == "berth_session"]
        expect(cookie and cookie[0].get("httpOnly"), "the session cookie is HttpOnly")
        expect(cookie[0].get("sameSite") == "Strict", "the session cookie is SameSite=Strict")
        d.go(base + "/ui/repositories")
        d.click("#logout")
        expect(wait_for(lambda: "/ui/login" in d.current()), "logout leads to the login page")
        keep = {k: cookie[0][k] for k in ("name", "value", "path") if k in cookie[0]}
        d.s("POST", "/cookie", {"cookie": keep})
        d.go(base + "/ui/repositories")
        expect("/ui/login" in d.current(), "the old cookie opens nothing")

        # A reader sees no rollback, and a POST forged in its browser (no token) is refused.
        login(d, base, "reader", a["password"])
        d.go(base + "/ui/history?" + q(repository=repo, tag="stable"))
        expect(d.find_all("a.rollback") == [], "a reader is offered no rollback")
        axe_check(d, "history, as a reader")
        d.shot(shots, "history-reader")
        status = d.js_async(
            "const done = arguments[arguments.length - 1];"
            "fetch('/ui/rollback', {method: 'POST', headers: {'Content-Type':"
            " 'application/x-www-form-urlencoded'}, body: arguments[0]})"
            ".then(r => done(r.status), e => done(String(e)));",
            q(repository=repo, tag="stable", to=new),
        )
        expect(status == 403, f"a forged POST is refused: {status}")

        # An admin makes the pull secret of namespace prod; the test pulls with it.
        d.go(base + "/ui/repositories")
        d.click("#logout")
        expect(wait_for(lambda: "/ui/login" in d.current()), "the reader logs out")
        login(d, base, "admin", a["password"])
        for width, label in ((1280, "desktop"), (375, "phone")):
            d.size(width, 900)
            for scheme in ("light", "dark"):
                d.color_scheme(scheme)
                for name, path in (("audit", "/ui/audit"), ("operations", "/ui/operations"),
                                   ("tenant", "/ui/tenant?" + q(name="team-a"))):
                    d.go(base + path)
                    check_page(d, f"{name} at {width}px, {scheme}")
                    d.shot(shots, f"{name}-{label}-{scheme}")
        d.size(1280, 900)
        d.color_scheme("light")
        # A GC dry run from the operations page: a background job, whose report the page
        # (reloading itself while it waits) shows once ready.
        d.go(base + "/ui/operations")
        d.click("#dry-run-gc")
        expect(wait_for(lambda: d.find_all("#runs tr[data-state=done]") != [], timeout=30),
               "the dry run's report appears")
        expect("would go" in d.text("#runs"), f"a report: {d.text('#runs')}")
        check_page(d, "operations with a dry run's report")
        d.shot(shots, "operations-dry-run")
        d.go(base + "/ui/tenant?" + q(name="team-a"))
        d.type("#namespace", "prod")
        d.click("#make-pull-secret")
        expect(wait_for(lambda: d.find_all("#pull-secret") != []), "the Secret is shown")
        axe_check(d, "the pull secret, shown once")
        d.shot(shots, "pull-secret")
        secret = json.loads(d.text("#pull-secret"))
        config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
        auth = next(iter(config["auths"].values()))
        print("PULL_SECRET " + json.dumps({"user": auth["username"], "password": auth["password"]}))
    finally:
        d.quit()
    expect(not VIOLATIONS, "axe-core violations:\n" + "\n".join(VIOLATIONS))
    print(f"axe-core: no violation on {AXE_PAGES} pages (axe-core {AXE_VERSION})")
    print("browser walk passed")


if __name__ == "__main__":
    main()
