"""``ddmr serve``'s page in a real, headless Chromium (``make test-browser``).

The system's Chromium and chromedriver drive it through Selenium (Debian: ``apt-get
install chromium chromium-driver``; no browser is downloaded). Without them the tests
skip, saying what is missing. The server runs in this process (the shipped ``brain-mr``
model, the example pair) on a free port of 127.0.0.1.

``DDMR_SERVE_SCREENSHOT=path.png`` also writes the page after the example pair's
registration to ``path.png`` (how ``docs/serve.png`` is made).
"""

import os
import shutil
import tempfile
import threading
import time

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
#: the launch flags that work in a sandbox without network or GPU
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1500")


def _find_browser():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (make test-browser installs the `browser` extra)")
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if binary is None:
        pytest.skip("no Chromium found (apt-get install chromium chromium-driver)")
    driver = shutil.which("chromedriver")
    if driver is None:
        pytest.skip(f"Chromium is at {binary} but no chromedriver was found (apt-get install chromium-driver)")
    return webdriver, binary, driver


@pytest.fixture(scope="module")
def server_url():
    from werkzeug.serving import make_server

    from ddmr_core.serve import create_app

    app = create_app()
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}/"
    http.shutdown()
    http.server_close()
    app.extensions["ddmr"].close()


@pytest.fixture(scope="module")
def browser():
    webdriver, binary, driver = _find_browser()
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ddmr-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    try:
        b = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    except Exception as exc:  # a browser that does not start here is an environment problem
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"Chromium ({binary}) did not start through {driver}: {str(exc).splitlines()[0]}")
    b.set_page_load_timeout(60)
    yield b
    b.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(browser, script, timeout=120.0):
    """Wait until the JavaScript expression ``script`` is true (polling, bounded)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if browser.execute_script(f"return Boolean({script});"):
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {script}; page state {browser.execute_script('return document.body.dataset.state')}")


ALL_LOADED = ("Array.from(document.querySelectorAll('#viewers img'))"
              ".every(i => i.complete && i.naturalWidth > 0)")


def test_example_pair_slider_and_metrics(browser, server_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server_url)
    wait_for(browser, "document.querySelectorAll('#model option').length > 0")
    assert browser.find_element(By.ID, "model").get_attribute("value") == "brain-mr"
    times = []
    for _ in range(2):  # the second run is the one a user waits for once the server is warm
        browser.find_element(By.ID, "register").click()
        wait_for(browser, "document.body.dataset.state === 'done'")
        times.append(float(browser.execute_script("return document.body.dataset.shownIn")))
        wait_for(browser, ALL_LOADED)
    print(f"\nexample pair shown in the browser after {times[0]:.2f} s, then {times[1]:.2f} s")
    metrics = browser.find_element(By.ID, "metrics").text
    assert "Dice, mean" in metrics and "NCC" in metrics and "folding" in metrics
    imgs = browser.find_elements(By.CSS_SELECTOR, "#viewers img")
    assert len(imgs) == 18  # 3 orthogonal views x (fixed, moving, warped, overlay, deformation, Jacobian)
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")]
    assert {"field.nii.gz", "warped.nii.gz", "warped_seg.nii.gz"} <= set(links)
    shot = os.environ.get("DDMR_SERVE_SCREENSHOT")
    if shot:
        browser.find_element(By.ID, "labels").click()
        wait_for(browser, "document.querySelector('#viewers img').src.includes('labels=1')")
        wait_for(browser, ALL_LOADED)
        browser.save_screenshot(shot)
        browser.find_element(By.ID, "labels").click()

    # move the axial slider: its six panels show another slice, the other views stay
    axial = browser.find_element(By.CSS_SELECTOR, ".viewer[data-axis='2'] input[type=range]")
    start = int(axial.get_attribute("value"))
    before = [i.get_attribute("src") for i in browser.find_elements(By.CSS_SELECTOR, ".viewer[data-axis='2'] img")]
    others = [i.get_attribute("src") for i in browser.find_elements(By.CSS_SELECTOR, ".viewer[data-axis='0'] img")]
    for _ in range(5):
        axial.send_keys(Keys.ARROW_RIGHT)
    assert int(axial.get_attribute("value")) == start + 5
    wait_for(browser, ALL_LOADED)
    after = [i.get_attribute("src") for i in browser.find_elements(By.CSS_SELECTOR, ".viewer[data-axis='2'] img")]
    assert all(a.endswith(f"/2/{start + 5}.png") for a in after) and all(b.endswith(f"/2/{start}.png") for b in before)
    assert [i.get_attribute("src") for i in browser.find_elements(By.CSS_SELECTOR, ".viewer[data-axis='0'] img")] == others
    assert f"slice {start + 6} /" in browser.find_element(By.CSS_SELECTOR, ".viewer[data-axis='2'] .slice-no").text
    # the pictures differ between the two slices (read back through a canvas)
    differ = browser.execute_async_script("""
        const [a, b, done] = arguments;
        const pix = (url) => new Promise((ok) => { const i = new Image(); i.onload = () => {
            const c = document.createElement('canvas'); c.width = i.width; c.height = i.height;
            const g = c.getContext('2d'); g.drawImage(i, 0, 0); ok(g.getImageData(0, 0, i.width, i.height).data); };
            i.src = url; });
        Promise.all([pix(a), pix(b)]).then(([x, y]) => done(x.length === y.length && x.some((v, k) => v !== y[k])));
    """, before[0], after[0])
    assert differ


def test_bad_upload_shows_a_message(browser, server_url, tmp_path):
    from selenium.webdriver.common.by import By

    junk = tmp_path / "notes.nii.gz"
    junk.write_bytes(b"this is not a NIfTI file")
    browser.get(server_url)
    wait_for(browser, "document.querySelectorAll('#model option').length > 0")
    browser.find_element(By.CSS_SELECTOR, "input[name=source][value=upload]").click()
    browser.find_element(By.NAME, "fixed").send_keys(str(junk))
    browser.find_element(By.NAME, "moving").send_keys(str(junk))
    browser.find_element(By.ID, "register").click()
    wait_for(browser, "document.body.dataset.state === 'error'")
    message = browser.find_element(By.ID, "error").text
    assert "notes.nii.gz" in message and "NIfTI" in message
    assert browser.find_element(By.ID, "register").is_enabled()  # the page can go on


def test_uploaded_pair_with_label_maps(browser, server_url, tmp_path):
    """The example pair's volumes as NIfTI files, uploaded through the file inputs."""
    import nibabel as nib
    from selenium.webdriver.common.by import By

    from ddmr_core.serve.example import example_pair

    pair = example_pair()
    for role in ("fixed", "moving", "fixed_seg", "moving_seg"):
        nib.save(nib.Nifti1Image(getattr(pair, role), pair.affine), str(tmp_path / f"my_{role}.nii.gz"))
    browser.get(server_url)
    wait_for(browser, "document.querySelectorAll('#model option').length > 0")
    browser.find_element(By.CSS_SELECTOR, "input[name=source][value=upload]").click()
    for role in ("fixed", "moving", "fixed_seg", "moving_seg"):
        browser.find_element(By.NAME, role).send_keys(str(tmp_path / f"my_{role}.nii.gz"))
    browser.find_element(By.ID, "register").click()
    wait_for(browser, "document.body.dataset.state === 'done'")
    wait_for(browser, ALL_LOADED)
    metrics = browser.find_element(By.ID, "metrics").text
    assert "Dice label 1" in metrics and "Dice, mean" in metrics
    after = float(next(line for line in metrics.splitlines() if line.startswith("Dice, mean")).split()[-1])
    assert after > 0.7  # the same pair as the example: registered as well
    assert "warped_seg.nii.gz" in [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")]
