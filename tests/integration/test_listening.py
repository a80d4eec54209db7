"""`musiclm-jax listen` (musiclm_jax/evaluation/listening.py): the pairs folder, the HTTP API
(plain urllib) and a rater's whole session in a real headless Chromium (Selenium), across a
server crash and restart.

The browser is Debian's chromium and chromedriver (`make browser` installs them; CHROMIUM
and CHROMEDRIVER override the paths). Without them the browser test skips, saying why, on a
developer's machine, and fails in CI (CI set; .ci/run sets it), so CI never passes without
having run it.
"""

import contextlib
import http.client
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from musiclm_jax.evaluation import listening

RATE = 16000
HEADER = "pair_id,caption,clip_a,clip_b,system_a,system_b"
# pair_id -> (caption, clip_a, clip_b, system_a, system_b); p2 has the systems the other way
# round, so a mix-up of clip letters and systems shows in the counts.
PAIRS = {
    "p1": ("calm solo piano", "p1_a.wav", "p1_b.wav", "musiclm", "baseline"),
    "p2": ("fast techno with heavy drums", "p2_a.wav", "p2_b.wav", "baseline", "musiclm"),
    "p3": ("a choir singing in a cathedral", "p3_a.flac", "p3_b.flac", "musiclm", "baseline"),
}
WINNER = {"p1": "musiclm", "p2": "musiclm", "p3": "baseline"}  # what the rater picks


def _write_pairs(folder, rows=None, header=HEADER) -> str:
  """A pairs folder: short sine clips (0.3 s) and pairs.csv with the given rows."""
  os.makedirs(folder, exist_ok=True)
  for i, (_, clip_a, clip_b, _, _) in enumerate(PAIRS.values()):
    for k, clip in enumerate((clip_a, clip_b)):
      t = np.arange(int(0.3 * RATE)) / RATE
      sf.write(os.path.join(folder, clip), 0.3 * np.sin(2 * np.pi * (220 + 110 * (2 * i + k)) * t),
               RATE)
  if rows is None:
    rows = [",".join((pair_id,) + row) for pair_id, row in PAIRS.items()]
  with open(os.path.join(folder, "pairs.csv"), "w", encoding="utf-8") as f:
    f.write("\n".join([header] + rows) + "\n")
  return str(folder)


@pytest.fixture
def pairs_dir(tmp_path):
  return _write_pairs(tmp_path / "pairs")


@pytest.fixture
def server(pairs_dir, tmp_path):
  """An in-process server on a free port: (base URL, ListeningTest)."""
  httpd = listening.make_server(pairs_dir, str(tmp_path / "answers.sqlite"), port=0)
  httpd.RequestHandlerClass.log_message = lambda *args: None
  thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.app
  httpd.shutdown()
  httpd.server_close()


def _request(url, body=None, headers=None):
  """(status, headers, body bytes), for error statuses too."""
  request = urllib.request.Request(url, data=body, headers=headers or {})
  try:
    with urllib.request.urlopen(request, timeout=10) as response:
      return response.status, response.headers, response.read()
  except urllib.error.HTTPError as e:
    return e.code, e.headers, e.read()


def _post_answer(base, answer, content_type="application/json"):
  body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
  return _request(f"{base}/api/answer", body, {"Content-Type": content_type})


def _count_answers(db_path) -> int:
  with contextlib.closing(sqlite3.connect(db_path)) as conn:
    return conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]


# --- The pairs folder --------------------------------------------------------------------

@pytest.mark.parametrize("header,row,message", [
    ("pair_id,caption,clip_a,clip_b,system_a", "x,c,p1_a.wav,p1_b.wav,s",
     "missing column(s) system_b"),
    (HEADER, "p1,again,p1_a.wav,p1_b.wav,musiclm,baseline", "line 5: duplicate pair_id 'p1'"),
    (HEADER, "p4,c,p1_a.wav,nope.wav,musiclm,baseline", "line 5, clip_b: clip"),
    (HEADER, "p4,c,p1_a.wav,p1_b.wav,musiclm,musiclm", "line 5: both clips are by system"),
    (HEADER, "p4,c,../pairs/p1_a.wav,p1_b.wav,musiclm,baseline", "is not a path inside"),
    (HEADER, "p4,c,pairs.csv,p1_b.wav,musiclm,baseline", "is not a .wav/.flac/.ogg/.mp3 file"),
    (HEADER, "p4,,p1_a.wav,p1_b.wav,musiclm,baseline", "line 5: empty caption"),
])
def test_load_pairs_names_the_file_and_line_of_a_bad_row(tmp_path, header, row, message):
  rows = [",".join((pair_id,) + r) for pair_id, r in PAIRS.items()] + [row]
  folder = _write_pairs(tmp_path / "pairs", rows, header)
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    listening.load_pairs(folder)
  assert os.path.join(folder, "pairs.csv") in str(error.value)


def test_load_pairs_reads_the_folder(pairs_dir):
  pairs = listening.load_pairs(pairs_dir)
  assert list(pairs) == ["p1", "p2", "p3"]
  assert pairs["p2"].clip_a == os.path.join(pairs_dir, "p2_a.wav")
  assert (pairs["p2"].system_a, pairs["p2"].caption) == ("baseline", PAIRS["p2"][0])


# --- HTTP, without a browser ---------------------------------------------------------------

@pytest.mark.parametrize("body,content_type,message", [
    (b"{not json", "application/json", "not JSON"),
    (b"\xff\xfe", "application/json", "not JSON"),
    (b'["alice", "p1", "a"]', "application/json", "JSON object"),
    ({"rater": "alice", "pair_id": "p9", "choice": "a"}, "application/json", "unknown pair_id"),
    ({"rater": "alice", "pair_id": "p1", "choice": "c"}, "application/json", "choice must be"),
    ({"rater": "alice", "pair_id": "p1", "choice": ["a"]}, "application/json", "choice must"),
    ({"rater": "alice", "pair_id": "p1"}, "application/json", "choice must be"),
    ({"pair_id": "p1", "choice": "a"}, "application/json", "rater id is missing"),
    ({"rater": "  ", "pair_id": "p1", "choice": "a"}, "application/json", "rater id is missing"),
    ({"rater": 7, "pair_id": "p1", "choice": "a"}, "application/json", "rater id is missing"),
    ({"rater": "x" * 65, "pair_id": "p1", "choice": "a"}, "application/json", "longer than 64"),
    ({"rater": "a\nb", "pair_id": "p1", "choice": "a"}, "application/json", "control char"),
    ({"rater": "alice", "pair_id": "p1", "choice": "a"}, "text/plain", "Content-Type must be"),
    ({"rater": "alice", "pair_id": "p1", "choice": "a", "pad": "x" * 5000},
     "application/json", "at most 4096"),
])
def test_bad_answers_get_400_and_store_nothing(server, body, content_type, message):
  base, app = server
  status, headers, reply = _post_answer(base, body, content_type)
  assert status == 400, reply
  assert headers["Content-Type"] == "application/json"
  assert message in json.loads(reply)["error"]
  assert _count_answers(app.db_path) == 0


def test_answer_without_content_length_gets_400(server):
  base, app = server
  conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
  conn.putrequest("POST", "/api/answer")
  conn.putheader("Content-Type", "application/json")
  conn.endheaders()
  response = conn.getresponse()
  assert response.status == 400
  assert "Content-Length" in json.loads(response.read())["error"]
  conn.close()
  assert _count_answers(app.db_path) == 0


def test_first_answer_stands(server):
  base, app = server
  status, _, reply = _post_answer(base, {"rater": " alice ", "pair_id": "p1", "choice": "b"})
  assert (status, json.loads(reply)["stored"]) == (200, True)
  status, _, reply = _post_answer(base, {"rater": "alice", "pair_id": "p1", "choice": "a"})
  assert status == 409 and "already answered" in json.loads(reply)["error"]
  with contextlib.closing(sqlite3.connect(app.db_path)) as conn:
    rows = conn.execute("SELECT rater, pair_id, choice, left_side FROM answers").fetchall()
  assert rows == [("alice", "p1", "b", listening.left_side(0, "alice", "p1"))]
  status, _, reply = _request(f"{base}/api/next?rater=alice")
  assert (status, json.loads(reply)["answered"]) == (200, 1)


def test_next_needs_a_rater(server):
  base, _ = server
  for query in ("", "?rater=", "?rater=" + "x" * 65):
    status, _, reply = _request(f"{base}/api/next{query}")
    assert status == 400 and "rater id" in json.loads(reply)["error"]


def test_clips_are_served_by_pair_id_and_nothing_else(server, pairs_dir):
  base, _ = server
  status, headers, data = _request(f"{base}/clips/p1/a")
  assert (status, headers["Content-Type"], data[:4]) == (200, "audio/wav", b"RIFF")
  assert data == open(os.path.join(pairs_dir, "p1_a.wav"), "rb").read()
  status, headers, data = _request(f"{base}/clips/p3/b")
  assert (status, headers["Content-Type"], data[:4]) == (200, "audio/flac", b"fLaC")
  status, headers, data = _request(f"{base}/clips/p1/b", headers={"Range": "bytes=4-7"})
  whole = open(os.path.join(pairs_dir, "p1_b.wav"), "rb").read()
  assert (status, data, headers["Content-Range"]) == (206, whole[4:8], f"bytes 4-7/{len(whole)}")
  assert _request(f"{base}/clips/p1/b", headers={"Range": "bytes=99999-"})[0] == 416
  host = base.removeprefix("http://")
  for path in ("/clips/../pairs.csv", "/clips/p1/../../pairs.csv", "/clips/%2e%2e/pairs.csv",
               "/clips/..%2Fpairs.csv/a", "/clips/p1_a.wav/a", "/clips/p1/c", "/pairs.csv",
               "/clips/p1/a/../../../pairs.csv", "/clips/%2Fetc%2Fpasswd/a", "/p1_a.wav"):
    conn = http.client.HTTPConnection(host, timeout=10)
    conn.request("GET", path)  # as written: urllib would not normalise it, but be sure
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 404, path
    assert b"pair_id" not in body and b"RIFF" not in body, path


def test_export_counts_wins_per_system(pairs_dir, tmp_path, capsys):
  pairs = listening.load_pairs(pairs_dir)
  db = str(tmp_path / "answers.sqlite")
  app = listening.ListeningTest(pairs, db)
  # bob: musiclm wins p1 (clip a) and p2 (clip b), baseline p3 (clip b); eve: baseline all.
  for rater, choices in {"bob": "abb", "eve": "bab"}.items():
    for pair_id, choice in zip(PAIRS, choices):
      assert app.record(rater, pair_id, choice)
  wins = listening.export_wins(db, pairs)
  assert (wins["answers"], wins["raters"]) == (6, 2)
  assert wins["systems"]["musiclm"] == {"wins": 2, "losses": 4, "comparisons": 6,
                                        "win_rate": pytest.approx(1 / 3)}
  assert wins["systems"]["baseline"]["wins"] == 4
  assert wins["head_to_head"] == {"baseline": {"musiclm": {"wins": 4, "losses": 2}},
                                  "musiclm": {"baseline": {"wins": 2, "losses": 4}}}
  out = str(tmp_path / "wins.json")
  listening.main(["--pairs", pairs_dir, "--db", db, "--export", out])
  with open(out, encoding="utf-8") as f:
    assert json.load(f) == json.loads(json.dumps(wins))
  table = capsys.readouterr().out
  assert re.search(r"baseline\s+4\s+2\s+6\s+66.7%", table), table
  assert table.index("baseline") < table.index("musiclm")  # best first


def test_export_refuses_answers_to_unknown_pairs(pairs_dir, tmp_path):
  pairs = listening.load_pairs(pairs_dir)
  db = str(tmp_path / "answers.sqlite")
  listening.ListeningTest(pairs, db).record("bob", "p1", "a")
  with pytest.raises(ValueError, match="pairs.csv lacks: \\['p1'\\]"):
    listening.export_wins(db, {k: v for k, v in pairs.items() if k != "p1"})
  with pytest.raises(FileNotFoundError):
    listening.export_wins(str(tmp_path / "none.sqlite"), pairs)


# --- Under load, across a crash --------------------------------------------------------------

@pytest.mark.timeout(300)
def test_concurrent_raters_lose_no_answer_across_a_kill_and_restart(tmp_path):
  """12 raters x 12 pairs answered by 12 concurrent clients, half before a SIGKILL of the
  server and half after its restart, with resubmissions: every acknowledged answer is in
  SQLite exactly once, with the choice that was sent."""
  pair_ids = [f"q{i:02d}" for i in range(12)]
  rows = [f"{p},caption {p},p1_a.wav,p1_b.wav,musiclm,baseline" for p in pair_ids]
  folder = _write_pairs(tmp_path / "pairs", rows)
  raters = [f"rater{i:02d}" for i in range(12)]
  choice = lambda rater, pair_id: "ab"[(hash((rater, pair_id)) & 1)]
  db = str(tmp_path / "answers.sqlite")
  statuses, errors = [], []

  def rater_session(base, rater, todo):
    try:
      for pair_id in todo:
        status, _, _ = _post_answer(base, {"rater": rater, "pair_id": pair_id,
                                           "choice": choice(rater, pair_id)})
        statuses.append((rater, pair_id, status))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(repr(e))

  def run_phase(base, todo_of):
    threads = [threading.Thread(target=rater_session, args=(base, r, todo_of(r)))
               for r in raters]
    for t in threads:
      t.start()
    for t in threads:
      t.join()

  with open(tmp_path / "server.log", "w+") as log:
    proc, port = _start_server(folder, db, log)
    try:
      run_phase(f"http://127.0.0.1:{port}", lambda r: pair_ids[:6])
    finally:
      _stop(proc)
    assert not errors and {s for *_, s in statuses} == {200}
    proc, port = _start_server(folder, db, log, port=0)
    try:
      statuses.clear()
      # The rest, plus two answers sent again (a replayed request after the crash).
      run_phase(f"http://127.0.0.1:{port}", lambda r: pair_ids[6:] + pair_ids[:2])
    finally:
      _stop(proc)
  assert not errors
  assert sorted(s for r, p, s in statuses if p in pair_ids[6:]) == [200] * 72
  assert sorted(s for r, p, s in statuses if p in pair_ids[:2]) == [409] * 24
  with contextlib.closing(sqlite3.connect(db)) as conn:
    stored = conn.execute("SELECT rater, pair_id, choice FROM answers").fetchall()
  assert len(stored) == len(set((r, p) for r, p, _ in stored)) == 144
  assert all(c == choice(r, p) for r, p, c in stored)


# --- The whole flow in Chromium ------------------------------------------------------------

def _browser_or_skip():
  """(webdriver module, chromium, chromedriver); skips locally, fails in CI, if missing."""
  chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
  chromedriver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
  missing = [name for name, path in (("chromium", chromium), ("chromedriver", chromedriver))
             if not (path and os.access(path, os.X_OK))]
  try:
    from selenium import webdriver  # pylint: disable=g-import-not-at-top
  except ImportError:
    webdriver = None
    missing.append("the selenium package (pip install -c constraints.txt -e '.[test]')")
  if missing:
    message = (f"browser test needs {', '.join(missing)}: `make browser` installs Debian's "
               "chromium and chromium-driver (root or sudo); CHROMIUM / CHROMEDRIVER set paths")
    (pytest.fail if os.environ.get("CI") else pytest.skip)(message)
  return webdriver, chromium, chromedriver


@contextlib.contextmanager
def _chromium(tmp_path):
  webdriver, chromium, chromedriver = _browser_or_skip()
  options = webdriver.ChromeOptions()
  options.binary_location = chromium
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--mute-audio", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
    options.add_argument(arg)  # --no-sandbox: CI runs as root, where the sandbox won't start
  driver = webdriver.Chrome(options=options,
                            service=webdriver.ChromeService(executable_path=chromedriver))
  try:
    yield driver
  finally:
    driver.quit()


def _start_server(pairs_dir, db, log, port=0):
  """`musiclm-jax listen` in a subprocess (so it can be killed like a crash): (proc, port)."""
  proc = subprocess.Popen(
      [sys.executable, "-m", "musiclm_jax.cli", "listen", "--pairs", pairs_dir, "--db", db,
       "--port", str(port)], stdout=subprocess.PIPE, stderr=log, text=True)
  for line in proc.stdout:
    match = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", line)
    if match:
      return proc, int(match.group(1))
  proc.wait()
  log.seek(0)
  raise AssertionError(f"the server did not start:\n{log.read()}")


def _stop(proc) -> None:
  proc.kill()  # SIGKILL: no clean shutdown, like a crash
  proc.wait()
  proc.stdout.close()


def _answer_shown_pair(driver, base, answered, rater="alice") -> str:
  """Checks the pair on screen (a new one, its clips loading, the progress) and picks
  WINNER's clip; returns the pair id."""
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  progress = f"{len(answered)} of {len(PAIRS)} answered"
  WebDriverWait(driver, 10).until(
      lambda d: d.find_element(By.ID, "trial").is_displayed()
      and d.find_element(By.ID, "progress").text == progress)
  caption = driver.find_element(By.ID, "caption").text
  [pair_id] = [p for p, row in PAIRS.items() if row[0] == caption]
  assert pair_id not in answered
  left = listening.left_side(0, rater, pair_id)  # the same on every load
  sources = [driver.find_element(By.ID, f"clip-{x}").get_attribute("src") for x in "ab"]
  assert sources == [base + listening.clip_url(pair_id, side)
                     for side in (left, "b" if left == "a" else "a")]
  WebDriverWait(driver, 10).until(lambda d: d.execute_script(
      "return [...document.querySelectorAll('audio')].every(a => a.readyState >= 1)"))
  assert _request(sources[0])[2][:4] in (b"RIFF", b"fLaC")
  winner_side = "a" if PAIRS[pair_id][3] == WINNER[pair_id] else "b"
  driver.find_element(By.ID, "choose-a" if winner_side == left else "choose-b").click()
  answered.append(pair_id)
  return pair_id


@pytest.mark.timeout(120)
def test_rater_session_in_chromium_survives_a_server_crash(pairs_dir, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  db = str(tmp_path / "answers.sqlite")
  with _chromium(tmp_path) as driver, open(tmp_path / "server.log", "w+") as log:
    proc, port = _start_server(pairs_dir, db, log)
    try:
      base = f"http://127.0.0.1:{port}"
      driver.get(base + "/")
      driver.find_element(By.ID, "rater-name").send_keys("alice")
      driver.find_element(By.ID, "start").click()
      answered = []
      _answer_shown_pair(driver, base, answered)
      _answer_shown_pair(driver, base, answered)
      # The page asks for the next pair only once the answer was acknowledged.
      WebDriverWait(driver, 10).until(
          lambda d: d.find_element(By.ID, "progress").text == f"2 of {len(PAIRS)} answered")
      _stop(proc)
      assert _count_answers(db) == 2
      proc, _ = _start_server(pairs_dir, db, log, port=port)  # same port: the page reloads
      driver.refresh()
      assert driver.current_url == f"{base}/?rater=alice"
      last = _answer_shown_pair(driver, base, answered)
      assert last not in answered[:2]
      WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "done").is_displayed())
      assert "Thank you" in driver.find_element(By.ID, "done").text
      assert not driver.find_element(By.ID, "trial").is_displayed()
    finally:
      _stop(proc)
  pairs = listening.load_pairs(pairs_dir)
  with contextlib.closing(sqlite3.connect(db)) as conn:
    rows = conn.execute("SELECT rater, pair_id, left_side FROM answers").fetchall()
  assert sorted(rows) == [("alice", p, listening.left_side(0, "alice", p)) for p in PAIRS]
  wins = listening.export_wins(db, pairs)
  assert wins["systems"]["musiclm"] == {"wins": 2, "losses": 1, "comparisons": 3,
                                        "win_rate": pytest.approx(2 / 3)}
  assert wins["head_to_head"]["baseline"]["musiclm"] == {"wins": 1, "losses": 2}
