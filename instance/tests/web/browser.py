#!/usr/bin/env python3
"""Drives Debian's headless Chromium through Selenium against the web client.

Run by instance/tests/web_browser.rs, which starts the instances, the canary
and the deliveries, and passes one JSON file: `python3 browser.py CONFIG`.
CONFIG["phase"] is one of:

- "hostile": log in, read an ordinary message, then open every corpus
  message (its page, its sandboxed body frame, the body URL on its own, its
  attachments) and check that nothing ran, navigated, asked or fetched;
- "compose": bob watches his list on beta while alice writes to him on
  alpha (route preview, send); the message arrives live, sealed;
- "control": the newsletter with remote content allowed must reach the
  canary (proves the canary and the substituted addresses work);
- "screenshots": the pages of docs/screenshots at a desktop and a phone width.

Prints "FINDING: ..." for each problem and exits 1 if there was any.
"""

import json
import os
import sys
import tempfile
import time

from selenium import webdriver
from selenium.common.exceptions import (
    JavascriptException,
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CFG = json.load(open(sys.argv[1]))
FINDINGS = []
T0 = time.time()


def log(msg):
    print("[%5.1fs] %s" % (time.time() - T0, msg), flush=True)


def finding(msg):
    FINDINGS.append(msg)
    print("FINDING: " + msg, flush=True)


def browser(width=1280, height=900, downloads=None):
    o = webdriver.ChromeOptions()
    o.binary_location = CFG.get("chromium", "/usr/bin/chromium")
    for a in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=%d,%d" % (width, height),
        "--user-data-dir=" + tempfile.mkdtemp(prefix="chromium-", dir=CFG["tmp"]),
    ]:
        o.add_argument(a)
    o.accept_insecure_certs = True
    # A dialog must stay open for us to see it, not be dismissed for us.
    o.unhandled_prompt_behavior = "ignore"
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if downloads:
        o.add_experimental_option(
            "prefs",
            {
                "download.default_directory": downloads,
                "download.prompt_for_download": False,
                "safebrowsing.enabled": False,
            },
        )
    service = Service(CFG.get("chromedriver", "/usr/bin/chromedriver"))
    d = webdriver.Chrome(service=service, options=o)
    d.set_page_load_timeout(20)
    d.set_script_timeout(10)
    if downloads:
        d.execute_cdp_cmd(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": downloads},
        )
    return d


def wait(d, cond, what, timeout=10):
    """Waits for cond(); `what` (a string, or a function giving one, called
    only on a timeout) says what was awaited. A page replaced while cond()
    looks at it is looked at again."""
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.05,
                             ignored_exceptions=(StaleElementReferenceException, JavascriptException)
                             ).until(lambda _: cond())
    except TimeoutException:
        if callable(what):
            try:
                what = what()
            except WebDriverException as e:
                what = "(page unreadable: %s)" % e.__class__.__name__
        raise SystemExit("timed out (%ss) waiting for %s; at %s" % (timeout, what, d.current_url))


def load(d, url):
    """d.get(url), tried twice: a renderer that is slow once on a loaded
    machine is noted; twice is a finding."""
    for attempt in (1, 2):
        try:
            d.get(url)
            return
        except TimeoutException as e:
            if attempt == 2:
                raise SystemExit("loading %s timed out twice: %s" % (url, e.msg))
            log("NOTE: loading %s timed out once; again" % url)


def ready(d):
    wait(d, lambda: d.execute_script("return document.readyState") == "complete", "page load")


def open_dialog(d):
    """The text of an open alert/confirm/prompt, or None."""
    try:
        a = d.switch_to.alert
    except NoAlertPresentException:
        return None
    text = a.text
    try:
        a.dismiss()
    except WebDriverException:
        pass
    return text if text is not None else ""


def login(d, base, address, password):
    d.get(base + "/login")
    ready(d)
    d.find_element(By.NAME, "address").send_keys(address)
    d.find_element(By.NAME, "password").send_keys(password)
    d.find_element(By.CSS_SELECTOR, "form[action='/login'] button[type=submit]").click()
    try:
        WebDriverWait(d, 10, poll_frequency=0.05).until(lambda _: d.current_url.rstrip("/").endswith("/mail"))
    except TimeoutException:
        raise SystemExit("logging in as %s did not reach /mail: at %s the page says %r (title %r)" % (
            address, d.current_url, d.find_element(By.TAG_NAME, "body").text[:300], d.title))
    ready(d)
    c = d.get_cookie("__Host-caliopen")
    if not c:
        raise SystemExit("no __Host-caliopen cookie after logging in as %s: %s" % (address, d.get_cookies()))
    if not (c.get("httpOnly") and c.get("secure") and c.get("sameSite") == "Strict" and c.get("path") == "/"):
        finding("session cookie attributes: %r" % c)
    if "__Host-caliopen" in d.execute_script("return document.cookie"):
        finding("document.cookie shows the session cookie (not HttpOnly)")


def rows(d):
    return d.execute_script(
        """return Array.from(document.querySelectorAll('#threads li.row')).map(li => {
             const a = li.querySelector('a'), g = li.querySelector('.grade'),
                   i = li.querySelector('svg.icon'), s = li.querySelector('.subject'),
                   au = li.querySelector('.author');
             return {href: a && a.getAttribute('href'), unread: li.classList.contains('unread'),
                     grade: g && g.textContent.trim(), gradeClass: g && g.className,
                     icon: i && i.getAttribute('aria-label'),
                     subject: s && s.textContent, author: au && au.textContent};
           })"""
    )


def row_for(d, tag):
    for r in rows(d):
        if r["subject"] and tag in r["subject"]:
            return r
    return None


PICTURES = [
    "Sealed letter carried by a labelled member",
    "Envelope: encrypted in transit",
    "Postcard: readable on the way",
    "Hand delivered: it never left this server",
]

# Checks a message body document (in its frame, or opened on its own):
# what is left after the sanitiser, as the browser parsed it.
DOM_CHECK = r"""
const bad = [];
const de = document.documentElement;
if (de.hasAttribute('data-xss')) bad.push('a script ran (data-xss set on <html>)');
for (const a of de.attributes) bad.push('<html> got attribute ' + a.name);
const FORBIDDEN = new Set(['script','iframe','frame','frameset','object','embed','applet','form',
  'input','button','textarea','select','option','keygen','isindex','base','link','meta','style',
  'svg','math','video','audio','source','track','picture','bgsound','portal','fencedframe',
  'template','noscript','noembed','noframes','xmp','plaintext','marquee','layer','image','area',
  'map','param','output','canvas','title','head','body','html','slot','dialog']);
const URLISH = new Set(['src','srcset','background','poster','ping','action','formaction','data',
  'codebase','lowsrc','dynsrc','xlink:href','usemap','srcdoc','attributionsrc','content',
  'http-equiv','xmlns','form','autofocus','contenteditable','id','class','tabindex',
  'sizes','imagesrcset','itemtype','manifest','profile','archive','classid','longdesc','cite']);
const head = Array.from(document.head.children).map(e => e.outerHTML);
const wrapper = head.length === 3
  && document.head.children[0].matches('meta[charset]')
  && document.head.children[1].matches('meta[name=referrer][content=no-referrer]')
  && document.head.children[2].matches('style');
if (!wrapper) bad.push('the head is not the wrapper: ' + head.join(' ').slice(0, 300));
if (document.body.attributes.length) bad.push('<body> got attributes: ' +
  Array.from(document.body.attributes).map(a => a.name).join(' '));
for (const el of document.body.querySelectorAll('*')) {
  const tag = el.localName;
  const where = '<' + tag + '>';
  if (el.namespaceURI !== 'http://www.w3.org/1999/xhtml') bad.push('foreign element ' + where + ' (' + el.namespaceURI + ')');
  if (FORBIDDEN.has(tag)) bad.push(where + ' kept');
  for (const a of el.attributes) {
    const n = a.name.toLowerCase(), v = a.value;
    if (n.startsWith('on')) bad.push(where + ' kept handler ' + n);
    else if (URLISH.has(n) || (n === 'name' && tag !== 'a')) bad.push(where + ' kept ' + n + '="' + v.slice(0, 80) + '"');
    else if (n === 'href') {
      if (tag !== 'a') bad.push(where + ' kept href');
      else if (!/^(https?:|mailto:)/i.test(v) || !['http:', 'https:', 'mailto:'].includes(el.protocol))
        bad.push('<a href="' + v.slice(0, 80) + '"> (scheme ' + el.protocol + ')');
    } else if (n === 'style' && /url\s*\(|expression|image-set|@import|\\|behavior|binding/i.test(v))
      bad.push(where + ' style="' + v.slice(0, 80) + '"');
    else if (n === 'target' && v !== '_blank') bad.push(where + ' target=' + v);
  }
  if (tag === 'a' && el.hasAttribute('href')) {
    const rel = (el.getAttribute('rel') || '').split(/\s+/);
    if (!rel.includes('noopener') || !rel.includes('noreferrer')) bad.push('<a> without rel=noopener noreferrer');
  }
  const cs = getComputedStyle(el);
  for (const p of ['backgroundImage', 'listStyleImage', 'borderImageSource', 'maskImage', 'cursor', 'content'])
    if (cs[p] && /url\(|image-set/i.test(cs[p])) bad.push(where + ' computed ' + p + ': ' + cs[p].slice(0, 80));
  if (cs.position === 'fixed' || cs.position === 'absolute' || cs.position === 'sticky') bad.push(where + ' position:' + cs.position);
}
for (const e of performance.getEntriesByType('resource')) bad.push('resource fetched: ' + e.name);
const text = document.body.innerText;
return {bad: bad, text: text.slice(0, 2000), links: document.links.length};
"""

TOP_CHECK = r"""
const bad = [];
if (document.documentElement.hasAttribute('data-xss')) bad.push('a script ran in the page');
const scripts = Array.from(document.scripts).map(s => s.getAttribute('src'));
if (scripts.length !== 1 || scripts[0] !== '/static/app.js') bad.push('scripts in the page: ' + JSON.stringify(scripts));
for (const el of document.querySelectorAll('*')) {
  for (const a of el.attributes) if (a.name.toLowerCase().startsWith('on')) bad.push('<' + el.localName + '> ' + a.name + ' in the page');
}
const frames = Array.from(document.querySelectorAll('iframe, frame, object, embed'));
for (const f of frames) if (!f.matches('iframe.body')) bad.push('<' + f.localName + '> in the page');
for (const i of document.querySelectorAll('img')) bad.push('<img src=' + i.getAttribute('src') + '> in the page');
for (const a of document.querySelectorAll('a[href]'))
  if (!['https:', 'http:', 'mailto:'].includes(a.protocol) || (a.host !== location.host && a.protocol !== 'mailto:'))
    bad.push('link in the page: ' + a.getAttribute('href').slice(0, 80));
for (const s of document.querySelectorAll('svg'))
  if (!s.matches('svg.sprite, svg.icon')) bad.push('<svg> in the page: ' + s.outerHTML.slice(0, 80));
const f = document.querySelector('iframe.body');
const res = performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin + '/'));
for (const r of res) bad.push('the page fetched ' + r);
return {bad: bad,
        h1: (document.querySelector('h1') || {}).textContent || '',
        frame: f ? {src: f.getAttribute('src'), sandbox: f.getAttribute('sandbox')} : null,
        pre: (document.querySelector('pre.body') || {}).textContent,
        panel: (document.querySelector('section.privacy-panel strong') || {}).textContent,
        grade: (document.querySelector('section.privacy-panel .grade') || {}).textContent,
        blocked: (document.querySelector('p.blocked') || {}).textContent || null,
        cookie: document.cookie,
        attachments: Array.from(document.querySelectorAll('section.attachments a')).map(a => ({href: a.getAttribute('href'), name: a.textContent}))};
"""

HEADERS = r"""
const done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: 'same-origin'}).then(r => done({status: r.status,
  ct: r.headers.get('content-type'), csp: r.headers.get('content-security-policy'),
  cd: r.headers.get('content-disposition'), xfo: r.headers.get('x-frame-options'),
  nosniff: r.headers.get('x-content-type-options')})).catch(e => done({error: String(e)}));
"""


class Canary:
    """The canary's log (one line per connection, written by the Rust test)."""

    def __init__(self, path):
        self.path = path
        self.seen = 0

    def lines(self):
        try:
            with open(self.path) as f:
                return [l.rstrip("\n") for l in f if l.strip()]
        except FileNotFoundError:
            return []

    def new(self):
        ls = self.lines()
        fresh = ls[self.seen :]
        self.seen = len(ls)
        return fresh


def console(d):
    try:
        return [e for e in d.get_log("browser")]
    except WebDriverException:
        return []


def check_console(d, stem, canary_addr):
    for e in console(d):
        m = e.get("message", "")
        # favicon.ico is asked of the instance itself (404): not a finding.
        if "favicon.ico" in m:
            continue
        if canary_addr in m or "Refused to" in m or "Blocked script execution" in m or "Uncaught" in m:
            finding("%s: console: %s" % (stem, m[:300]))


def settle(d, canary, stem, what, seconds):
    time.sleep(seconds)
    for hit in canary.new():
        finding("%s: the canary was reached while %s: %s" % (stem, what, hit))


def hostile():
    base = CFG["alpha"]
    canary = Canary(CFG["canary_log"])
    addr = CFG["canary_addr"]
    downloads = tempfile.mkdtemp(prefix="downloads-", dir=CFG["tmp"])
    d = browser(downloads=downloads)
    try:
        login(d, base, CFG["alice"], CFG["alice_password"])
        log("logged in as %s" % CFG["alice"])
        # The list itself: every corpus subject and author is escaped.
        listed = rows(d)
        r = d.execute_script(TOP_CHECK)
        for b in r["bad"]:
            finding("the list page: " + b)
        if open_dialog(d) is not None:
            finding("the list page opened a dialog")
        # The ordinary message (swaks) first.
        plain = row_for(d, CFG["swaks_subject"])
        if not plain:
            raise SystemExit("the swaks message is not in the list: %s" % [x["subject"] for x in listed])
        if not plain["unread"]:
            finding("the new swaks message is not shown unread")
        if plain["icon"] not in PICTURES:
            finding("the swaks row's picture is %r" % plain["icon"])
        d.find_element(By.CSS_SELECTOR, "#threads a[href='%s']" % plain["href"]).click()
        wait(d, lambda: d.current_url.endswith(plain["href"]), "the swaks message page")
        ready(d)
        t = d.execute_script(TOP_CHECK)
        if CFG["swaks_subject"] not in t["h1"]:
            finding("swaks message h1 is %r" % t["h1"])
        if not t["pre"] or CFG["swaks_body"] not in t["pre"]:
            finding("swaks message body is %r" % t["pre"])
        if t["panel"] not in PICTURES:
            finding("swaks message privacy panel says %r" % t["panel"])
        log("ordinary message: %r, %s %s" % (t["h1"], t["grade"], t["panel"]))
        # The list now shows it read.
        d.get(base + "/mail")
        ready(d)
        again = row_for(d, CFG["swaks_subject"])
        if again and again["unread"]:
            finding("the swaks message is still unread after opening it")
        listed = {x["subject"]: x for x in rows(d)}
        # What the pages reflect of the URL is escaped.
        probe = '"><img src=x onerror=alert(1)><script>alert(1)</script>'
        from urllib.parse import quote
        for path in ["/mail?q=" + quote(probe), "/mail?mailbox=1&q=" + quote("</title><svg onload=alert(1)>"),
                     "/messages/" + quote(probe), "/messages/ffffffffffff", "/nowhere/" + quote(probe)]:
            load(d, base + path)
            ready(d)
            dlg = open_dialog(d)
            if dlg is not None:
                finding("%s opened a dialog: %r" % (path, dlg))
                continue
            for b in d.execute_script(TOP_CHECK)["bad"]:
                finding("%s: %s" % (path, b))
            if "q=" in path:
                q = d.execute_script("return (document.querySelector('input[name=q]') || {}).value")
                want = probe if "mailbox" not in path else "</title><svg onload=alert(1)>"
                if q != want:
                    finding("%s: the search box shows %r" % (path, q))
        console(d)
        canary.new()

        for stem in CFG["corpus"]:
            tag = "[%s]" % stem
            row = next((x for s, x in listed.items() if s and tag in s), None)
            if not row:
                finding("%s: not in the list" % stem)
                continue
            if row["icon"] not in PICTURES:
                finding("%s: row picture %r" % (stem, row["icon"]))
            url = base + row["href"]
            load(d, url)
            ready(d)
            has_frame = d.find_elements(By.CSS_SELECTOR, "iframe.body")
            body_doc = None
            if has_frame:
                d.switch_to.frame(has_frame[0])
                wait(d, lambda: d.execute_script("return document.readyState") == "complete"
                     and d.execute_script("return location.pathname").endswith("/body"), stem + " body frame")
                body_doc = d.execute_script(DOM_CHECK)
                d.switch_to.default_content()
            settle(d, canary, stem, "its page was open", CFG.get("settle", 0.25))
            dlg = open_dialog(d)
            if dlg is not None:
                finding("%s: a dialog opened on its page: %r" % (stem, dlg))
            if d.current_url != url:
                finding("%s: the page navigated to %s" % (stem, d.current_url))
                continue
            top = d.execute_script(TOP_CHECK)
            for b in top["bad"]:
                finding("%s: %s" % (stem, b))
            if "__Host-caliopen" in top["cookie"]:
                finding("%s: document.cookie shows the session cookie" % stem)
            if tag not in top["h1"]:
                finding("%s: h1 is %r" % (stem, top["h1"]))
            if top["panel"] not in PICTURES:
                finding("%s: privacy panel says %r" % (stem, top["panel"]))
            summary = "grade %s, %s" % (top["grade"], "frame" if has_frame else "text")
            if has_frame:
                fr = top["frame"]
                sb = set((fr["sandbox"] or "").split())
                if sb != {"allow-popups", "allow-popups-to-escape-sandbox"}:
                    finding("%s: frame sandbox is %r" % (stem, fr["sandbox"]))
                body_url = base + fr["src"]
                if not fr["src"].startswith(row["href"] + "/body"):
                    finding("%s: frame src %r" % (stem, fr["src"]))
                for b in body_doc["bad"]:
                    finding("%s: in the body frame: %s" % (stem, b))
                h = d.execute_async_script(HEADERS, fr["src"])
                csp = (h.get("csp") or "")
                if "default-src 'none'" not in csp or "sandbox" not in csp or "script-src" in csp:
                    finding("%s: body CSP is %r" % (stem, csp))
                if not (h.get("ct") or "").startswith("text/html"):
                    finding("%s: body content type %r" % (stem, h.get("ct")))
                # The body URL opened on its own (a link to it, say): the
                # CSP sandbox holds without the frame's attribute.
                load(d, body_url)
                ready(d)
                alone = d.execute_script(DOM_CHECK)
                settle(d, canary, stem, "its body was open on its own", CFG.get("settle", 0.25))
                dlg = open_dialog(d)
                if dlg is not None:
                    finding("%s: a dialog opened on the body URL: %r" % (stem, dlg))
                if d.current_url != body_url:
                    finding("%s: the body URL navigated to %s" % (stem, d.current_url))
                else:
                    for b in alone["bad"]:
                        if b not in body_doc["bad"]:
                            finding("%s: on the body URL: %s" % (stem, b))
                summary += ", %d links, %d chars of text" % (body_doc["links"], len(body_doc["text"]))
            if top["blocked"]:
                summary += ", " + " ".join(top["blocked"].split())
            # Attachments: offered as downloads, never rendered.
            for a in top["attachments"]:
                if "/parts/" not in a["href"] or not a["href"].startswith(row["href"] + "/parts/"):
                    finding("%s: attachment link %r" % (stem, a["href"]))
                    continue
                if d.current_url != url:
                    load(d, url)
                    ready(d)
                h = d.execute_async_script(HEADERS, a["href"])
                if h.get("ct") != "application/octet-stream" or not (h.get("cd") or "").startswith("attachment;") \
                        or "sandbox" not in (h.get("csp") or "") or h.get("nosniff") != "nosniff":
                    finding("%s: attachment %r served with %r" % (stem, a["name"], h))
                before = set(os.listdir(downloads))
                d.find_element(By.CSS_SELECTOR, "section.attachments a[href='%s']" % a["href"]).click()
                got = wait(d, lambda: [f for f in os.listdir(downloads)
                                       if f not in before and not f.endswith(".crdownload")], "the download of " + a["name"])
                settle(d, canary, stem, "attachment %r was downloaded" % a["name"], 0.1)
                dlg = open_dialog(d)
                if dlg is not None:
                    finding("%s: a dialog opened after downloading %r: %r" % (stem, a["name"], dlg))
                if d.current_url != url:
                    finding("%s: downloading %r navigated to %s" % (stem, a["name"], d.current_url))
                summary += ", attachment %r downloaded as %r" % (a["name"], got[0])
            check_console(d, stem, addr)
            log("%s: %s" % (stem, summary))
            exp = CFG["expect"].get(stem, {})
            if "text" in exp:
                shown = (body_doc or {}).get("text") or top["pre"] or ""
                for want in exp["text"]:
                    if want not in shown:
                        finding("%s: %r is not shown (got %r)" % (stem, want, shown[:200]))
            if exp.get("blocked") and not top["blocked"]:
                finding("%s: no 'remote resources blocked' note" % stem)
            if exp.get("frame") is not None and bool(has_frame) != exp["frame"]:
                finding("%s: HTML frame expected %s, got %s" % (stem, exp["frame"], bool(has_frame)))
            if exp.get("attachments") is not None and len(top["attachments"]) < exp["attachments"]:
                finding("%s: %d attachments shown, expected %d" % (stem, len(top["attachments"]), exp["attachments"]))
        # Late loads (a refresh after a delay, a lazy image) still count.
        d.get(base + "/mail")
        ready(d)
        settle(d, canary, "(end)", "the last pages closed", 1.0)
        if "__Host-caliopen" in d.execute_script("return document.cookie"):
            finding("document.cookie shows the session cookie")
    finally:
        d.quit()


def compose():
    a = browser()
    b = browser()
    try:
        login(b, CFG["beta"], CFG["bob"], CFG["bob_password"])
        b.execute_script("window.__notReloaded = 1")
        log("bob watches his list on beta")
        login(a, CFG["alpha"], CFG["alice"], CFG["alice_password"])
        a.get(CFG["alpha"] + "/compose")
        ready(a)
        to = a.find_element(By.ID, "to")
        to.send_keys(CFG["bob"])
        route = wait(a, lambda: a.execute_script(
            "const l = document.querySelector('#routes li.route'); return l && {cls: l.className, text: l.textContent}"),
            "the route preview for " + CFG["bob"])
        if "route-seal" not in route["cls"].split():
            finding("route preview for %s: %r %r" % (CFG["bob"], route["cls"], route["text"]))
        log("route preview: %s: %s" % (route["cls"], " ".join(route["text"].split())))
        if a.current_url != CFG["alpha"] + "/compose":
            finding("typing a recipient reloaded the page")
        a.find_element(By.NAME, "subject").send_keys(CFG["mesh_subject"])
        a.find_element(By.NAME, "body").send_keys(CFG["mesh_body"])
        att = os.path.join(CFG["tmp"], "notes.txt")
        with open(att, "w") as f:
            f.write("attached from the browser\n")
        a.find_element(By.NAME, "attachment").send_keys(att)
        a.find_element(By.CSS_SELECTOR, "#compose button[name=op][value=send]").click()
        wait(a, lambda: "Message sent." in a.execute_script("return (document.querySelector('h1')||{}).textContent||''"),
             lambda: "'Message sent.' (page: %s)" % a.find_element(By.TAG_NAME, "main").text[:300], timeout=20)
        log("sent: %s" % " ".join(a.find_element(By.ID, "routes").text.split()))
        # Bob's list refreshes by itself.
        try:
            row = WebDriverWait(b, 30, poll_frequency=0.1).until(lambda _: row_for(b, CFG["mesh_subject"]))
            if not b.execute_script("return window.__notReloaded === 1"):
                finding("bob's list was reloaded instead of updated live")
        except TimeoutException:
            b.get(CFG["beta"] + "/mail")
            ready(b)
            row = row_for(b, CFG["mesh_subject"])
            if not row:
                raise SystemExit("the message never reached bob's list on beta (30 s, then a reload)")
            finding("bob's open list did not show the new message live (it is there after a reload)")
        if row["icon"] != PICTURES[0]:
            finding("bob's row picture is %r, not %r" % (row["icon"], PICTURES[0]))
        log("bob's row (live): %s %s %r by %r" % (row["grade"], row["icon"], row["subject"], row["author"]))
        b.find_element(By.CSS_SELECTOR, "#threads a[href='%s']" % row["href"]).click()
        wait(b, lambda: b.current_url.endswith(row["href"]), "bob's message page")
        ready(b)
        t = b.execute_script(TOP_CHECK)
        if t["panel"] != PICTURES[0]:
            finding("bob's message panel says %r" % t["panel"])
        if CFG["mesh_body"] not in (t["pre"] or ""):
            finding("bob's message body is %r" % t["pre"])
        if not any(x["name"] == "notes.txt" for x in t["attachments"]):
            finding("bob's message attachments: %r" % t["attachments"])
        log("bob's message: %r, grade %s, %s" % (t["h1"], t["grade"], t["panel"]))
        # Logging out ends the session.
        a.get(CFG["alpha"] + "/mail")
        ready(a)
        a.find_element(By.CSS_SELECTOR, "form.logout button").click()
        wait(a, lambda: "/login" in a.current_url or a.find_elements(By.NAME, "password"), "the login page after logout")
        a.get(CFG["alpha"] + "/mail")
        ready(a)
        if not a.find_elements(By.NAME, "password"):
            finding("after logout /mail still shows %s" % a.current_url)
    finally:
        a.quit()
        b.quit()


def control():
    canary = Canary(CFG["canary_log"])
    canary.new()
    d = browser()
    try:
        login(d, CFG["alpha"], CFG["alice"], CFG["alice_password"])
        row = row_for(d, "[benign-newsletter]")
        d.get(CFG["alpha"] + row["href"] + "?remote=1")
        ready(d)
        f = d.find_element(By.CSS_SELECTOR, "iframe.body")
        d.switch_to.frame(f)
        wait(d, lambda: d.execute_script("const i = document.images[0]; return i && i.complete"), "the remote logo")
        d.switch_to.default_content()
        time.sleep(0.3)
        hits = canary.new()
        log("with remote content allowed the canary saw: %s" % hits)
        if not any("/benign-newsletter/logo.png" in h for h in hits):
            finding("the canary saw no request for the allowed newsletter logo: %s" % hits)
    finally:
        d.quit()


# What looks broken on a page, in words (reported, not failed on).
VISUAL_LINT = r"""
const width = arguments[0], notes = [];
const sw = document.documentElement.scrollWidth;
if (sw > width + 1) notes.push('the page is ' + sw + ' px wide in a ' + width + ' px viewport');
const name = e => e.localName + (e.id ? '#' + e.id : '') + (e.classList.length ? '.' + Array.from(e.classList).join('.') : '');
let over = 0;
for (const e of document.body.querySelectorAll('*')) {
  const r = e.getBoundingClientRect();
  if (r.width && r.right > width + 1 && !(e.parentElement && e.parentElement.getBoundingClientRect().right > width + 1)) {
    if (over++ < 5) notes.push(name(e) + ' sticks out to x=' + Math.round(r.right));
  }
  const hidden = getComputedStyle(e).clip !== 'auto' || (r.width <= 1 && r.height <= 1);
  if (!hidden && e.scrollWidth > e.clientWidth + 1 && ['auto', 'scroll', 'hidden'].includes(getComputedStyle(e).overflowX) && e.localName !== 'textarea')
    notes.push(name(e) + ' scrolls or clips sideways (' + e.scrollWidth + ' > ' + e.clientWidth + ')');
}
for (const u of document.querySelectorAll('svg use')) {
  const h = u.getAttribute('href') || '';
  if (h.startsWith('#') && !document.getElementById(h.slice(1))) notes.push('icon ' + h + ' has no symbol');
}
for (const p of document.querySelectorAll('polyline, polygon'))
  if (!p.closest('symbol') && (p.getAttribute('points') || '').trim().split(/\s+/).filter(Boolean).length < 2)
    notes.push(name(p.closest('svg')) + ' draws nothing: its ' + p.localName + ' has fewer than two points (' + JSON.stringify(p.getAttribute('points')) + ')');
for (const i of document.images) if (!i.complete || !i.naturalWidth) notes.push('image not shown: ' + i.src);
const hs = ['h1', 'h2', 'h3'].map(t => document.querySelector('main ' + t)).map(e => e && parseFloat(getComputedStyle(e).fontSize));
if (hs[0] && hs[1] && hs[0] < hs[1]) notes.push('the h1 (' + hs[0] + ' px) is smaller than an h2 (' + hs[1] + ' px)');
for (const e of document.querySelectorAll('main *')) {
  const cs = getComputedStyle(e);
  if (e.children.length === 0 && e.textContent.trim() && e.scrollWidth > e.clientWidth + 1 && cs.textOverflow !== 'ellipsis' && cs.overflowX !== 'visible')
    notes.push(name(e) + ' text is cut: ' + e.textContent.trim().slice(0, 40));
}
return notes;
"""


def shot(d, path, width, mobile):
    """A full-page screenshot at `width` CSS px."""
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": 800 if not mobile else 844,
                       "deviceScaleFactor": 1, "mobile": mobile})
    time.sleep(0.2)
    h = d.execute_script("return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight)")
    h = min(max(h, 600), 4000)
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": h, "deviceScaleFactor": 1, "mobile": mobile})
    time.sleep(0.3)
    for n in d.execute_script(VISUAL_LINT, width):
        log("VISUAL %s: %s" % (os.path.basename(path), n))
    import base64
    png = d.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
    with open(path, "wb") as f:
        f.write(base64.b64decode(png["data"]))


def screenshots():
    out = CFG["out"]
    os.makedirs(out, exist_ok=True)
    for label, width, mobile in [("desktop", 1280, False), ("phone", 390, True)]:
        d = browser(width=max(width, 500))
        b = browser(width=max(width, 500))
        try:
            d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                              {"width": width, "height": 844, "deviceScaleFactor": 1, "mobile": mobile})
            d.get(CFG["alpha"] + "/login")
            ready(d)
            shot(d, os.path.join(out, "login-%s.png" % label), width, mobile)
            login(d, CFG["alpha"], CFG["alice"], CFG["alice_password"])
            d.get(CFG["alpha"] + "/mail")
            ready(d)
            shot(d, os.path.join(out, "discussions-%s.png" % label), width, mobile)
            row = row_for(d, CFG["message_subject"])
            d.get(CFG["alpha"] + row["href"])
            ready(d)
            d.execute_script("const s = document.querySelector('section.privacy-panel details'); if (s) s.open = true")
            shot(d, os.path.join(out, "message-%s.png" % label), width, mobile)
            d.get(CFG["alpha"] + "/compose")
            ready(d)
            d.find_element(By.ID, "to").send_keys(CFG["bob"] + ", carol@example.net")
            wait(d, lambda: len(d.find_elements(By.CSS_SELECTOR, "#routes li.route")) >= 2, "the route preview")
            d.find_element(By.NAME, "subject").send_keys("Plans for Saturday")
            d.find_element(By.NAME, "body").send_keys("Hi Bob,\n\nAre we still on for Saturday?\n\nAlice")
            shot(d, os.path.join(out, "compose-%s.png" % label), width, mobile)
            for page in ["contacts", "privacy", "settings"]:
                d.get(CFG["alpha"] + "/" + page)
                ready(d)
                shot(d, os.path.join(out, "%s-%s.png" % (page, label), ), width, mobile)
            # Bob's side: the sealed message from alice.
            login(b, CFG["beta"], CFG["bob"], CFG["bob_password"])
            row = row_for(b, CFG["mesh_subject"])
            if row:
                b.get(CFG["beta"] + row["href"])
                ready(b)
                b.execute_script("const s = document.querySelector('section.privacy-panel details'); if (s) s.open = true")
                shot(b, os.path.join(out, "message-sealed-%s.png" % label), width, mobile)
            else:
                finding("no mesh message in bob's list for the sealed screenshot")
            log("%s screenshots written" % label)
        finally:
            d.quit()
            b.quit()


PHASES = {"hostile": hostile, "compose": compose, "control": control, "screenshots": screenshots}

if __name__ == "__main__":
    try:
        PHASES[CFG["phase"]]()
    except SystemExit as e:
        if e.code not in (None, 0):
            finding(str(e.code))
    except Exception as e:  # an unexpected error is a finding with its trace
        import traceback
        traceback.print_exc()
        finding("%s: %s" % (type(e).__name__, e))
    log("%s: %d finding(s)" % (CFG["phase"], len(FINDINGS)))
    sys.exit(1 if FINDINGS else 0)
