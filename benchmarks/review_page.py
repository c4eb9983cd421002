"""How fast the review page shows a cohort, and what it costs on disk.

python -m benchmarks.review_page [--patients=48] [--page_loads=5]

Writes a `predict` output for N synthetic patients (256x256, 20-40 slices;
the masks are the truth shifted by a few pixels: the page's speed does not
depend on a model), serves it with `lgg_jax.review`, and opens it in
headless chromium (SwiftShader WebGL2, as the browser test). Measures, in
the page's own clock (performance.now(), from navigation): the table shown
(review.json read, sorted and drawn) and NiiVue attached; then, per patient
opened, the time from the click to its volumes drawn. Prints a markdown
table and the output's size on disk (per patient, and the page's assets).
Figures: benchmarks/RESULTS.md ("The review page").
"""

from __future__ import annotations

import pathlib
import statistics
import tempfile
import threading
import time

import numpy as np
from absl import flags

from lgg_jax import cli, inference, predict, quality, review, segmenter
from lgg_jax.data import synthetic

_PATIENTS = flags.DEFINE_integer("patients", 48, "Patients in the cohort (the outside test set has 48).")
_REPEATS = flags.DEFINE_integer("page_loads", 5, "Page loads timed, and patients opened.")


class ShiftedTruth:
  """Segmenter.assess's stand-in: the truth moved 3 pixels right as the mask."""

  members, rule = [], quality.DEFAULT_SINGLE

  def __init__(self, truths):
    self.truths = truths

  def assess(self, images, **settings):
    truth = self.truths[id(images)]
    masks = np.roll(truth, 3, axis=2)
    probabilities = masks.astype(np.float32) * 0.9
    estimate = quality.Estimate(0.9, False, "", int(masks.sum()), {})
    return segmenter.Assessment(masks, probabilities, np.zeros_like(probabilities), estimate)


def write_cohort(folder: pathlib.Path, patients: int) -> pathlib.Path:
  spec = synthetic.SyntheticSpec(num_patients=patients, min_slices=20, max_slices=40, seed=7)
  cases = predict.find_cases(synthetic.write_dataset(folder / "data", spec))  # patient folders, truth included
  out = folder / "predictions"
  predict.predict_cases(ShiftedTruth({id(c.images): c.truth for c in cases}), cases, out, inference.Settings(),
                        save_probabilities=True)
  return out


def _browser(profile: str):
  from selenium import webdriver  # the test extra
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = "/usr/bin/chromium"
  for argument in ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                   "--disable-background-networking", "--disable-component-update", "--window-size=1500,1000",
                   f"--user-data-dir={profile}"):
    options.add_argument(argument)
  return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def _until(driver, script: str, timeout: float = 120.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = driver.execute_script(f"return {script};")
    if value:
      return value
    time.sleep(0.02)
  raise TimeoutError(script)


def measure(out: pathlib.Path, repeats: int, profile: str) -> dict:
  from selenium.webdriver.common.by import By
  server = review.make_server(out, port=0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  driver = _browser(profile)
  url = f"http://127.0.0.1:{server.server_address[1]}/"
  try:
    table, opened, loads = [], [], []
    for _ in range(repeats + 1):  # the first load fills the browser's caches: not counted
      driver.get(url)
      table.append(_until(driver, "window.review && window.review.tableReadyMs"))
    for k in range(repeats + 1):
      rows = driver.find_elements(By.CSS_SELECTOR, "#patients tbody tr")
      started = time.perf_counter()
      rows[k].click()
      _until(driver, f"window.review.ready === true && window.review.open === {k}")
      opened.append(time.perf_counter() - started)
      loads.append(driver.execute_script("return window.review.openTimes.loadMs;") / 1000)
  finally:
    driver.quit()
    server.shutdown()
    server.server_close()
  return {"table_ms": statistics.median(table[1:]), "first_table_ms": table[0],
          "open_s": statistics.median(opened[1:]), "first_open_s": opened[0],
          "load_s": statistics.median(loads[1:])}


def _bytes(paths) -> int:
  return sum(p.stat().st_size for p in paths if p.is_file())


def main(argv):
  del argv
  with tempfile.TemporaryDirectory(prefix="review_page_") as tmp:
    started = time.perf_counter()
    out = write_cohort(pathlib.Path(tmp), _PATIENTS.value)
    written_s = time.perf_counter() - started
    result = measure(out, _REPEATS.value, str(pathlib.Path(tmp) / "chromium"))
    volumes = [p for p in out.rglob("*.nii.gz")]
    per_patient = _bytes(volumes) / _PATIENTS.value
    index = (out / review.INDEX_FILE).stat().st_size
  assets = _bytes(review.ASSETS.rglob("*"))
  niivue = (review.ASSETS / "niivue" / "niivue.js").stat().st_size
  print(f"\n{_PATIENTS.value} synthetic patients written in {written_s:.0f} s (predict's files, masks given)\n")
  print("| measure | value |\n|---|---|")
  print(f"| table shown, from navigation (median of {_REPEATS.value} loads; first load) | "
        f"{result['table_ms']:.0f} ms ({result['first_table_ms']:.0f} ms) |")
  print(f"| a patient opened, click to drawn (median of {_REPEATS.value}; first) | "
        f"{result['open_s']:.2f} s ({result['first_open_s']:.2f} s) |")
  print(f"| of it NiiVue's loadVolumes (fetch, decompress, textures; median) | {result['load_s']:.2f} s |")
  print(f"| NIfTI volumes per patient (8 layers, with --save_probabilities) | {per_patient / 1e6:.2f} MB |")
  print(f"| review.json for {_PATIENTS.value} patients | {index / 1e3:.0f} kB |")
  print(f"| the page's assets (NiiVue {niivue / 1e6:.1f} MB of them) | {assets / 1e6:.2f} MB |")


if __name__ == "__main__":
  cli.run(main)
