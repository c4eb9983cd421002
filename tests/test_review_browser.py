"""The review page in a real browser: Debian's chromium, headless, WebGL2 on
SwiftShader, driven by selenium. Under CI=true a missing chromium,
chromedriver or selenium fails the test (conftest.require / import_or_skip)."""

import io
import json
import threading
import time

import nibabel as nib
import numpy as np
import pytest

from conftest import import_or_skip, require
from lgg_jax import inference, predict, quality, review, segmenter

webdriver = import_or_skip("selenium.webdriver", "the review page's browser test")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SLICES = 10
# Display rows, columns of every case's predicted square: up and left of the
# centre, so that a flipped display moves it (a centred square would not).
PRED = (slice(40, 150), slice(40, 150))
TRUTH = (slice(80, 176), slice(80, 176))    # overlapping it: (70, 70) is a false positive
TUMOUR_SLICES = range(3, 8)


class PlantedSegmenter:
  """A stand-in for Segmenter.assess: known masks and estimates, so the test
  knows where the page must draw the prediction."""

  def __init__(self, scores):
    self.scores, self.members, self.rule = scores, [], quality.DEFAULT_SINGLE

  def assess(self, images, **settings):
    case = int(images[0, 0, 0, 0])  # each case's first pixel holds its number
    masks = np.zeros(images.shape[:3], bool)
    masks[TUMOUR_SLICES.start:TUMOUR_SLICES.stop, PRED[0], PRED[1]] = True
    probabilities = masks.astype(np.float32) * 0.9
    score = self.scores[case]
    estimate = quality.Estimate(score, score < 0.7, "planted" if score < 0.7 else "", int(masks.sum()), {})
    return segmenter.Assessment(masks, probabilities, np.zeros_like(probabilities), estimate)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
  out = tmp_path_factory.mktemp("review_page")
  rng = np.random.default_rng(0)
  ramp = np.linspace(40, 200, 256, dtype=np.float32)
  cases = []
  for number, name in enumerate(("TCGA_AA_0001", "TCGA_BB_0002", "TCGA_CC_0003")):
    # Each slice a different brightness, so that moving through slices changes the picture.
    images = (ramp[None, :, None, None] * (0.5 + 0.05 * np.arange(SLICES))[:, None, None, None]
              + rng.normal(0, 3, (SLICES, 256, 256, 3))).clip(0, 255).astype(np.uint8)
    images[0, 0, 0, 0] = number
    truth = np.zeros(images.shape[:3], bool)
    truth[TUMOUR_SLICES.start:TUMOUR_SLICES.stop, TRUTH[0], TRUTH[1]] = True
    cases.append(predict.Case(name, [f"{name}_{k + 1}" for k in range(SLICES)], images, truth))
  # A NIfTI case (a 4-D stack and its mask, LPS-like axes, 0.9 x 0.9 x 3 mm): volumes in its own grid.
  nifti = tmp_path_factory.mktemp("nifti_input") / "TCGA_DD_0004"
  nifti.mkdir()
  affine = np.diag([-0.9, -0.9, 3.0, 1.0])
  stack = (rng.random((200, 220, SLICES, 3)) * 200).astype(np.uint8)
  truth = np.zeros((200, 220, SLICES), np.uint8)
  truth[60:140, 60:140, TUMOUR_SLICES.start:TUMOUR_SLICES.stop] = 1
  nib.save(nib.Nifti1Image(stack, affine), str(nifti / "TCGA_DD_0004.nii.gz"))
  nib.save(nib.Nifti1Image(truth, affine), str(nifti / "TCGA_DD_0004_mask.nii.gz"))
  [case] = predict.find_cases(nifti)
  case.images[0, 0, 0, 0] = 3
  cases.append(case)
  seg = PlantedSegmenter({0: 0.9, 1: 0.4, 2: 0.8, 3: 0.85})
  predict.predict_cases(seg, cases, out, inference.Settings(), save_probabilities=True)
  return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
  require(CHROMIUM, "Debian's chromium (apt-get install chromium)")
  require(CHROMEDRIVER, "Debian's chromium-driver (apt-get install chromium-driver)")
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                   "--disable-background-networking", "--disable-component-update", "--window-size=1500,1000",
                   f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
    options.add_argument(argument)
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  yield driver
  driver.quit()


def _wait(driver, script, timeout=60):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if driver.execute_script(f"return {script};"):
      return
    time.sleep(0.1)
  raise AssertionError(f"the page never got to: {script}")


def _pixel(canvas, xy):
  from PIL import Image
  picture = Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")
  return np.asarray(picture)[int(xy[1]), int(xy[0])].astype(int), np.asarray(picture)


def test_the_page_lists_sorts_and_shows_patients(predicted, browser):
  server = review.make_server(predicted, port=0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
    _wait(browser, "window.review && window.review.tableReady === true")

    # The table holds predictions.json's cases: flagged first, then worst Dice first.
    cases = json.loads((predicted / "predictions.json").read_text())["cases"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#patients tbody tr")
    shown = [r.get_attribute("data-case") for r in rows]
    expected = sorted(cases, key=lambda c: (not c["review"], c["dice"]))
    assert shown == [c["case"] for c in expected]
    for row, case in zip(rows, expected):
      cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
      assert case["case"] in cells[0] and str(case["slices"]) in cells and f"{case['quality']:.3f}" in cells
      assert f"{case['dice']:.3f}" in cells and ("planted" in cells) == case["review"]
    # Volumes are fetched only when a patient is opened.
    fetched = "performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('.nii'))"
    assert browser.execute_script(f"return {fetched};") == []

    header = browser.find_element(By.CSS_SELECTOR, "#patients th[data-key='case']")
    header.click()
    names = lambda: [r.get_attribute("data-case") for r in browser.find_elements(By.CSS_SELECTOR, "#patients tbody tr")]
    assert names() == sorted(c["case"] for c in cases)
    browser.find_element(By.CSS_SELECTOR, "#patients th[data-key='case']").click()
    assert names() == sorted((c["case"] for c in cases), reverse=True)

    opened = "TCGA_BB_0002"
    browser.find_element(By.CSS_SELECTOR, f"#patients tbody tr[data-case='{opened}']").click()
    _wait(browser, "window.review.ready === true")
    urls = browser.execute_script(f"return {fetched};")
    assert urls and all(opened in u for u in urls)
    assert browser.execute_script("return window.review.slice;") == TUMOUR_SLICES.start  # the most tumour

    # A false-positive pixel of the prediction (display row 70, column 70: voxel x = y = 255 - 70) shows red.
    canvas = browser.find_element(By.ID, "gl")
    time.sleep(0.5)  # the first frames after loading
    xy = browser.execute_script(
        "const nv = window.review.nv; return nv.frac2canvasPos(nv.vox2frac([185, 185, window.review.slice]));")
    ratio = browser.execute_script("return window.devicePixelRatio;")
    xy = [v / ratio for v in xy]
    colour, picture = _pixel(canvas, xy)
    assert colour[0] > colour[1] + 40 and colour[0] > colour[2] + 40, colour
    # Orientation, on the canvas itself and not through NiiVue's own mapping: the
    # prediction sits up and left of the slice's centre, and the slice's
    # brightness ramp rises from top to bottom, as in the PNGs.
    picture = picture.astype(int)
    corners = np.array(browser.execute_script(
        "const nv = window.review.nv, k = window.review.slice;"
        "return [[0, 0, k], [255, 255, k]].map(v => nv.frac2canvasPos(nv.vox2frac(v)));")) / ratio
    (left, right), (top, bottom) = np.sort(corners[:, 0]), np.sort(corners[:, 1])  # where the slice is drawn
    red_rows, red_columns = np.nonzero((picture[..., 0] > picture[..., 1] + 40) & (picture[..., 0] > picture[..., 2] + 40))
    assert red_rows.mean() < (top + bottom) / 2 - 10 and red_columns.mean() < (left + right) / 2 - 10, (
        red_rows.mean(), red_columns.mean(), (top, bottom, left, right))
    grey = picture[int(top):int(bottom), int(left):int(right)].mean(axis=(1, 2))
    assert grey[: len(grey) // 5].mean() + 20 < grey[-len(grey) // 5:].mean(), grey
    browser.find_element(By.ID, "layer-mask").click()
    time.sleep(0.3)
    colour, before = _pixel(canvas, xy)
    assert abs(colour[0] - colour[1]) < 25 and abs(colour[0] - colour[2]) < 25, colour  # grey: the image alone

    # Another slice: the picture changes.
    slice_before = browser.execute_script("return window.review.slice;")
    browser.find_element(By.TAG_NAME, "body").send_keys("\ue013")  # arrow up
    _wait(browser, f"window.review.slice === {slice_before + 1}")
    time.sleep(0.3)
    _, after = _pixel(canvas, xy)
    assert np.abs(after.astype(int) - before.astype(int)).mean() > 1

    # The mouse wheel over the image moves through slices too (NiiVue's own), and the slider follows.
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 120).perform()
    _wait(browser, f"window.review.slice !== {slice_before + 1} && "
                   "document.getElementById('slice').value === String(window.review.slice)")

    # The keyboard opens the next patient in the table's order.
    order = names()
    browser.find_element(By.TAG_NAME, "body").send_keys("n")
    _wait(browser, f"window.review.ready === true && window.review.rows[window.review.open].case === "
                   f"'{order[order.index(opened) + 1]}'")

    # NIfTI input: its volume in ml, and NiiVue's multiplanar view.
    row = browser.find_element(By.CSS_SELECTOR, "#patients tbody tr[data-case='TCGA_DD_0004']")
    ml = next(c for c in cases if c["case"] == "TCGA_DD_0004")["predicted_volume_ml"]
    assert f"{ml:.1f}" in [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    browser.find_element(By.CSS_SELECTOR, "#patients tbody tr[data-case='TCGA_AA_0001']").click()
    _wait(browser, "window.review.ready === true && window.review.rows[window.review.open].case === 'TCGA_AA_0001'")
    assert browser.find_element(By.ID, "multiplanar").get_attribute("hidden") is not None  # not for slices
    browser.find_element(By.CSS_SELECTOR, "#patients tbody tr[data-case='TCGA_DD_0004']").click()
    _wait(browser, "window.review.ready === true && window.review.rows[window.review.open].case === 'TCGA_DD_0004'")
    assert browser.execute_script("return window.review.slices;") == SLICES
    browser.find_element(By.ID, "multiplanar").click()
    assert browser.execute_script("return window.review.nv.opts.sliceType;") == 3  # SLICE_TYPE.MULTIPLANAR

    # Offline: every resource the page loaded came from this server (no CDN, no network).
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert loaded and all(u.startswith(base) or u.startswith("data:") for u in loaded), loaded

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
  finally:
    server.shutdown()
    server.server_close()
