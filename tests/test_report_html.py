"""report.html: one self-contained page, sortable tables, each number's configuration; checked in
a real headless browser (Debian's chromium + chromium-driver, driven by selenium) where one is installed."""

import base64
import html
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cache import data_root
from probe.records import write_record
from probe.report.page import build_report

#: headline per (model, task); hog has no normals result (an empty cell, always sorted last)
VALUES = {("pixels", "depth"): 0.372, ("hog", "depth"): 0.307, ("vit_b_random", "depth"): 0.389,
          ("vit_b_mae", "depth"): 0.611, ("pixels", "normals"): 0.047, ("vit_b_random", "normals"): 0.075,
          ("vit_b_mae", "normals"): 0.290}
HEADLINE = {"depth": "d1", "normals": "within_11.25"}
IMAGENET = {"pixels": 4.0, "hog": 9.0, "vit_b_random": 2.0, "vit_b_mae": 68.0}
SCREENSHOT_SIZE = (1000, 700)


def _write_records(root) -> None:
    for (model, task), value in VALUES.items():
        for seed, delta in enumerate((0.0, 0.01)):              # two seeds: mean ± std
            for head, offset in (("linear", 0.0), ("mlp", 0.05)):
                write_record(root, task=task, dataset="synthetic", model=model, probe=f"{head}-block11-lr0.0005",
                             config={"head": head, "layers": ["block11"], "lr": 5e-4}, protocol="midprobe",
                             metrics={HEADLINE[task]: value + delta + offset}, headline=HEADLINE[task],
                             fingerprint={"model": model, "weights": f"random:{model}"}, wall_seconds=1.0, seed=seed)
    write_record(root, task="similarity", dataset="synthetic", model="pixels", probe="similarity",
                 config={"task": "similarity"}, metrics={"f1": 0.333}, headline="f1", protocol="midprobe",
                 fingerprint={"model": "pixels", "weights": "random:pixels"}, wall_seconds=1.0, seed=0)
    write_record(root, task="depth", dataset="nyuv2@paper", model="vit_b_mae+paper", probe="dpt-all-lr0.0005",
                 config={"head": "dpt", "layers": ["block2", "block5"], "lr": 5e-4}, protocol="paper",
                 metrics={"d1": 0.5}, headline="d1", fingerprint={"model": "vit_b_mae+paper", "weights": "sha256:ab"},
                 wall_seconds=1.0, seed=0)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """The report page of :data:`VALUES` (built once for the module)."""
    folder = tmp_path_factory.mktemp("report_html")
    root = data_root(folder / "data")
    _write_records(root)
    csv = folder / "imagenet.csv"
    csv.write_text("model,imagenet_top1\n" + "".join(f"{m},{v}\n" for m, v in IMAGENET.items()))
    build_report(root, imagenet_csv=str(csv))
    return root.reports() / "report.html"


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the text of each table cell."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(page: Path) -> list[tuple[str, dict]]:
    parser = _Elements()
    parser.feed(page.read_text())
    return parser.tags


def test_page_is_self_contained(page):
    text = page.read_text()
    tags = _tags(page)
    images = [a["src"] for t, a in tags if t == "img"]
    # midprobe/linear and /mlp: 2 scatters + correlations + ranking each drawn (4 models with ImageNet values)
    assert len(images) >= 8
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    links = [a.get("href") or a.get("src") for t, a in tags if t in ("a", "link", "script", "img")]
    assert not [u for u in links if u and not u.startswith(("#", "data:"))]
    assert not re.search(r"https?://", text)


def test_page_lists_protocols_stores_and_each_numbers_configuration(page):
    root = data_root(page.parents[1])
    text = page.read_text()
    from protocols import PROTOCOLS

    assert "<dt><code>midprobe</code></dt>" in text and "<dt><code>paper</code></dt>" in text
    assert html.escape(PROTOCOLS["paper"].description) in text
    store = root.feature_store("synthetic", "vit_b_mae")
    assert f"<code>{store}</code> (weights <code>random:vit_b_mae</code>)" in text
    assert f"<code>{root.feature_store('nyuv2@paper', 'vit_b_mae+paper')}</code>" in text
    tags = _tags(page)
    ids = {a["id"] for _, a in tags if "id" in a}
    assert {"leaderboard-midprobe_linear", "leaderboard-midprobe_mlp", "leaderboard-paper_dpt"} <= ids
    cells = [a for t, a in tags if t == "td" and "title" in a]
    mae_depth = next(a["title"] for a in cells if "synthetic/vit_b_mae/midprobe/linear" in a["title"])
    assert mae_depth.splitlines()[:6] == ["probe: linear-block11-lr0.0005", "protocol: midprobe", "head: linear",
                                          "layers: block11", "lr: 0.0005", "metric: d1"]
    assert "seeds: 0, 1" in mae_depth and "record: results/depth/synthetic/vit_b_mae/midprobe/" in mae_depth
    anchors = [a["href"] for t, a in tags if t == "a" and a.get("href", "").startswith("#record-")]
    assert anchors and all(href[1:] in ids for href in anchors)
    # the cell shows the board's number: mean over the two seeds, in %, with the seeds' t interval
    # (no per-image scores in these records): 0.616 ± 12.706 · 0.00707 / √2
    assert re.search(r'<td data-value="0\.6160*\d*" title="[^"]*"><a href="#record-\d+">61\.6 ± 0\.5 '
                     r'\[55\.2, 68\.0\]</a></td>', text)


# --- in a real browser --------------------------------------------------------------------------------------------

def _browser_paths() -> tuple[str | None, str | None]:
    browsers = [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")]
    return next((b for b in browsers if b), None), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    binary, driver_path = _browser_paths()
    if not binary or not driver_path:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver) to run the report-page test")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="midprobe-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 f"--window-size={SCREENSHOT_SIZE[0]},{SCREENSHOT_SIZE[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _column(driver, table_id: str, index: int) -> list[str]:
    rows = driver.find_elements("css selector", f"#{table_id} tbody tr")
    return [row.find_elements("css selector", "th, td")[index].text for row in rows]


def _click_header(driver, table_id: str, index: int) -> None:
    driver.find_elements("css selector", f"#{table_id} thead th")[index].click()


def save_screenshot(driver, page: Path, path: Path) -> Path:
    """A ``SCREENSHOT_SIZE`` PNG of the top of ``page`` (the picture of the report in README.md)."""
    width, height = SCREENSHOT_SIZE
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    driver.get(page.as_uri())
    driver.save_screenshot(str(path))
    return path


def test_page_renders_without_errors_and_sorts_in_a_browser(browser, page):
    browser.get(page.as_uri())
    assert browser.title == "midprobe report"
    assert browser.find_element("css selector", "h1").text == "midprobe report"
    images = browser.find_elements("css selector", "img")
    assert images and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
    board = "leaderboard-midprobe_linear"
    assert _column(browser, board, 0) == ["hog", "pixels", "vit_b_mae", "vit_b_random"]
    _click_header(browser, board, 1)                          # depth: best first
    assert _column(browser, board, 0) == ["vit_b_mae", "vit_b_random", "pixels", "hog"]
    # mean ± std over the two seeds, then the 95 % interval (t with 1 degree of freedom × the standard error: ± 12.7 × 0.5)
    assert _column(browser, board, 1) == ["61.6 ± 0.5 [55.2, 68.0]", "39.4 ± 0.5 [33.0, 45.8]",
                                          "37.7 ± 0.5 [31.3, 44.1]", "31.2 ± 0.5 [24.8, 37.6]"]
    _click_header(browser, board, 1)                          # again: worst first
    assert _column(browser, board, 0) == ["hog", "pixels", "vit_b_random", "vit_b_mae"]
    _click_header(browser, board, 2)                          # normals: hog has none, last either way
    assert _column(browser, board, 0) == ["vit_b_mae", "vit_b_random", "pixels", "hog"]
    _click_header(browser, board, 2)
    assert _column(browser, board, 0) == ["pixels", "vit_b_random", "vit_b_mae", "hog"]
    header = browser.find_elements("css selector", f"#{board} thead th")[2]
    assert header.get_attribute("aria-sort") == "ascending"
    cell = browser.find_element("css selector", f"#{board} tbody tr:first-child td:nth-of-type(2) a")
    target = cell.get_attribute("href").split("#")[1]
    cell.click()
    # the page opens the cell's records on the hashchange event, which the browser fires after the click
    from selenium.webdriver.support.ui import WebDriverWait

    opened = WebDriverWait(browser, 5).until(
        lambda b: b.execute_script("return document.getElementById(arguments[0]).open", target) or None)
    assert opened is True
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    shot = save_screenshot(browser, page, page.with_name("report_screenshot.png"))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000
