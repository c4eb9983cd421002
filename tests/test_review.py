"""The review server: what it serves and what it refuses; the page's index."""

import http.client
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading

import nibabel as nib
import numpy as np
import pytest

from lgg_jax import predict, review

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def served(tmp_path):
  """A server on a free port over tmp_path/root, with a secret beside root."""
  root = tmp_path / "root"
  (root / "case").mkdir(parents=True)
  (root / "case" / "inside.txt").write_text("inside")
  (root / review.INDEX_FILE).write_text(json.dumps({"kind": "predict", "cases": []}))
  (tmp_path / "secret.txt").write_text("secret")
  (root / "out_link.txt").symlink_to(tmp_path / "secret.txt")
  (root / "out_dir").symlink_to(tmp_path)
  (root / "in_link.txt").symlink_to(root / "case" / "inside.txt")
  (root / "loop").symlink_to(root / "loop")
  server = review.make_server(root, port=0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()


def _request(server, path, method="GET"):
  connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
  connection.request(method, path)  # the path goes out exactly as written
  response = connection.getresponse()
  body = response.read()
  connection.close()
  return response.status, body, response


def test_serves_files_under_the_folder_and_the_page(served):
  assert served.server_address[0] == "127.0.0.1"  # the default binds this machine only
  assert _request(served, "/files/case/inside.txt")[:2] == (200, b"inside")
  assert _request(served, "/files/in_link.txt")[:2] == (200, b"inside")  # a link that stays inside
  status, body, _ = _request(served, "/")
  assert status == 200 and b"review.js" in body
  status, body, response = _request(served, "/assets/review.js")
  assert status == 200 and response.getheader("Content-Type") == "text/javascript"
  assert _request(served, "/assets/niivue/niivue.js")[0] == 200
  about = json.loads(_request(served, "/api/about")[1])
  assert about["index"] == review.INDEX_FILE and about["curves"] is None


@pytest.mark.skipif(os.sep != "/" or os.altsep, reason="a backslash separates folders here")
def test_serves_a_case_whose_folder_name_has_a_backslash(served, tmp_path):
  """On POSIX a backslash is a plain character: such a patient folder's
  files were refused with 404s, so its case showed nothing."""
  root = tmp_path / "root"  # the fixture's folder
  (root / "TCGA\\x").mkdir()
  (root / "TCGA\\x" / "flair.nii.gz").write_bytes(b"volume")
  assert _request(served, "/files/TCGA%5Cx/flair.nii.gz")[:2] == (200, b"volume")


@pytest.mark.parametrize("path", [
    "/files/../secret.txt", "/files/case/../../secret.txt", "/files/%2e%2e/secret.txt", "/files/..%2fsecret.txt",
    "/files/%2E%2E%2Fsecret.txt", "/files/case%2F..%2F..%2Fsecret.txt", "/files//etc/passwd", "/files/%2Fetc%2Fpasswd",
    "/files/..%5csecret.txt", "/files/out_link.txt", "/files/out_dir/secret.txt", "/assets/../review.py",
    "/assets/%2e%2e/review.py", "/files/case", "/files/%00", "/secret.txt", "/files/missing.txt", "/files/loop",
])
def test_refuses_everything_outside_the_folder(served, path):
  status, body, _ = _request(served, path)
  assert status == 404 and b"secret" not in body


def test_answers_only_requests_naming_this_machine(served):
  """DNS rebinding: a page elsewhere reaching 127.0.0.1 under its own name gets nothing."""
  port = served.server_address[1]
  for host, status in ((f"evil.example:{port}", 403), (f"localhost:{port}", 200), (f"127.0.0.1:{port}", 200)):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("GET", "/files/case/inside.txt", skip_host=True)
    connection.putheader("Host", host)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == status and (b"inside" in response.read()) == (status == 200)
    connection.close()


def test_an_ipv6_loopback_binds_and_answers_its_own_name(tmp_path):
  """--host=::1 once failed to bind (an IPv4 socket), and its Host header,
  [::1]:PORT, lost its port at the wrong colon."""
  assert review.host_name("[::1]:8008") == review.host_name("[::1]") == "[::1]"
  assert review.host_name("localhost:8008") == "localhost" and review.host_name("evil.example") == "evil.example"
  (tmp_path / "case").mkdir()
  (tmp_path / "case" / "inside.txt").write_text("inside")
  review.write_index(tmp_path, "predict", [])
  server = review.make_server(tmp_path, host="::1", port=0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    connection = http.client.HTTPConnection("::1", server.server_address[1], timeout=10)
    connection.request("GET", "/files/case/inside.txt")
    response = connection.getresponse()
    assert response.status == 200 and response.read() == b"inside"
  finally:
    server.shutdown()
    server.server_close()


def test_another_loopback_address_answers_the_name_it_printed(tmp_path):
  review.write_index(tmp_path, "predict", [])
  server = review.make_server(tmp_path, host="127.0.0.2", port=0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    port = server.server_address[1]
    for host, status in ((f"127.0.0.2:{port}", 200), (f"evil.example:{port}", 403)):
      connection = http.client.HTTPConnection("127.0.0.2", port, timeout=10)
      connection.putrequest("GET", "/api/about", skip_host=True)
      connection.putheader("Host", host)
      connection.endheaders()
      assert connection.getresponse().status == status, host
      connection.close()
  finally:
    server.shutdown()
    server.server_close()


def test_a_port_out_of_range_or_in_use_is_an_error_naming_the_setting(served, tmp_path):
  for port in (70000, -1):
    with pytest.raises(ValueError, match=rf"--port={port}: want 0"):
      review.make_server(tmp_path / "root", port=port)
  taken = served.server_address[1]
  with pytest.raises(ValueError, match=rf"--host=127.0.0.1 --port={taken}: cannot serve there"):
    review.make_server(tmp_path / "root", port=taken)


def test_the_page_finds_an_evaluation_written_after_the_server_started(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / review.CURVES_FILE).write_text('{"step": 1, "train_loss": 1.0}\n')
  server = review.make_server(run, port=0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    assert json.loads(_request(server, "/api/about")[1])["index"] is None
    (run / "evaluation" / "test_step1").mkdir(parents=True)
    review.write_index(run / "evaluation" / "test_step1", "evaluate", [])
    assert json.loads(_request(server, "/api/about")[1])["index"] == "evaluation/test_step1/review.json"
    (run / review.CURVES_FILE).unlink()
    shutil.rmtree(run / "evaluation")
    status, body, _ = _request(server, "/api/about")
    assert status == 404 and b"holds no review.json" in body
  finally:
    server.shutdown()
    server.server_close()


def test_an_index_that_fails_to_write_leaves_no_partial_file(tmp_path, monkeypatch):
  def full_disk(*args):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "replace", full_disk)
  with pytest.raises(OSError, match="No space left"):
    review.write_index(tmp_path, "predict", [{"case": "a"}])
  assert list(tmp_path.iterdir()) == []


def test_an_index_is_strict_json_with_an_undefined_hd95_as_null(tmp_path):
  rows = [{"case": "a", "hd95_px": float("nan"), "dice": 0.0, "nested": [float("inf")]}]
  text = review.write_index(tmp_path, "evaluate", rows).read_text()
  loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in review.json"))
  assert loaded["cases"][0]["hd95_px"] is None and loaded["cases"][0]["nested"] == [None]
  assert not list(tmp_path.glob("*.partial"))


def test_answers_get_and_head_only(served):
  status, body, response = _request(served, "/files/case/inside.txt", "HEAD")
  assert status == 200 and body == b"" and response.getheader("Content-Length") == "6"
  for method in ("POST", "PUT", "DELETE"):
    assert _request(served, "/files/case/inside.txt", method)[0] == 501


def test_a_run_folder_shows_its_newest_evaluation_and_curves(tmp_path):
  run = tmp_path / "run"
  for name in ("test_step1", "external_step2"):
    (run / "evaluation" / name).mkdir(parents=True)
    (run / "evaluation" / name / review.INDEX_FILE).write_text("{}")
    os.utime(run / "evaluation" / name / review.INDEX_FILE, (1e9, 1e9 + len(name)))
  (run / review.CURVES_FILE).write_text('{"step": 1, "train_loss": 1.0}\n')
  about = review.find_index(run)
  assert about == {"index": "evaluation/external_step2/review.json", "curves": "metrics.jsonl", "title": "run"}
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*holds no review.json"):
    review.find_index(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    review.find_index(tmp_path / "nowhere")


def test_volumes_for_slice_folders_show_as_the_pngs_do_and_errors_are_labelled(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (4, 256, 256, 3), dtype=np.uint8)
  truth = np.zeros((4, 256, 256), bool)
  truth[:, 10:20, 30:40] = True
  pred = np.zeros_like(truth)
  pred[:, 15:25, 30:40] = True
  case = predict.Case("p", [f"p_{k + 1}" for k in range(4)], images, truth)
  files = predict.write_review_volumes(case, pred, tmp_path)["files"]
  assert set(files) == {"pre", "flair", "post", "mask", "truth", "errors"}
  flair = nib.load(str(tmp_path / files["flair"]))
  assert nib.aff2axcodes(flair.affine) == ("R", "A", "S") and flair.get_data_dtype() == np.uint8
  # Display slice k, row r, column c is voxel (X-1-c, Y-1-r, k): anterior at the top, right on the left.
  np.testing.assert_array_equal(predict.to_display_slices(np.asarray(flair.dataobj)), images[..., 1])
  errors = predict.to_display_slices(np.asarray(nib.load(str(tmp_path / files["errors"])).dataobj))
  assert (errors[truth & pred] == review.FOUND).all() and (errors[pred & ~truth] == review.FALSE_POSITIVE).all()
  assert (errors[truth & ~pred] == review.MISSED).all() and (errors[~truth & ~pred] == 0).all()


def test_the_page_opens_at_the_tumour_or_else_the_middle_slice():
  images = np.zeros((5, 256, 256, 3), np.uint8)
  empty = np.zeros((5, 256, 256), bool)
  case = predict.Case("p", [f"p_{k + 1}" for k in range(5)], images, None)
  assert predict.focus_slice(case, empty) == 2  # nothing anywhere: not the bottom slice
  pred = empty.copy()
  pred[3, :4, :4] = True
  assert predict.focus_slice(case, pred) == 3
  truth = empty.copy()
  truth[1, :2, :2] = True
  assert predict.focus_slice(predict.Case("p", case.slice_names, images, truth), pred) == 1


def test_the_command_prints_its_address_and_ctrl_c_stops_it(tmp_path):
  (tmp_path / review.INDEX_FILE).write_text(json.dumps({"kind": "predict", "cases": []}))
  # SIGINT at its default, as from a terminal, even when the suite itself was started in the
  # background (a non-interactive shell's `cmd &` ignores SIGINT, and children inherit that).
  process = subprocess.Popen([sys.executable, "-m", "lgg_jax.review", str(tmp_path), "--port=0"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    line = process.stdout.readline()
    assert "http://127.0.0.1:" in line, line + process.stderr.read()
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/api/about")
    assert connection.getresponse().status == 200
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
  finally:
    process.kill()
  assert process.returncode == 0 and "stopped" in out and "Traceback" not in err, err
  nothing = subprocess.run([sys.executable, "-m", "lgg_jax.review", str(tmp_path / "nowhere")], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
  assert nothing.returncode == 1 and nothing.stderr.strip().splitlines()[-1].startswith("error: ")
