"""Human annotation: the query list round-trips through CSV and contact sheets, and each
bad annotation file fails with one line naming the file and the line."""

import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastjax.label import annotate

NAMES = ("cat", "dog", "frog")


@pytest.fixture
def workdir(tmp_path):
    # 12 constant-colour images: image i is filled with the value 20 * i.
    images = (np.arange(12, dtype=np.uint8)[:, None, None, None] * 20
              * np.ones((1, 8, 8, 3), np.uint8))
    q = annotate.make_query([np.array([7, 3, 9]), np.array([], np.int64), np.array([5, 1])], NAMES)
    annotate.write_query(q, images[q.sample_id], tmp_path, per_sheet=4)
    return tmp_path


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_query_files_round_trip(workdir):
    q = annotate.read_query(workdir)
    assert q.client.tolist() == [0, 0, 0, 2, 2]
    assert q.sample_id.tolist() == [7, 3, 9, 5, 1]
    assert q.position.tolist() == [0, 1, 2, 0, 1]
    assert q.budget == 5 and q.class_names == NAMES
    rows = list(csv.DictReader(open(workdir / "query.csv")))
    assert [r["sheet"] for r in rows] == ["query_sheet_000.png"] * 4 + ["query_sheet_001.png"]
    assert all(r["label"] == "" for r in rows)
    # Contact sheet: tile j (10 per row, 96 px + 14 px caption) shows image sample_id[j].
    sheet = np.asarray(Image.open(workdir / "query_sheet_000.png"))
    assert sheet.shape[1:] == (10 * 96, 3) and sheet.shape[0] > 96 + 14  # a footer under the tiles
    assert not (sheet[96 + 14:] == 255).all()  # ... with text in it
    for j, sid in enumerate([7, 3, 9, 5]):
        assert (sheet[10:80, j * 96 + 10: j * 96 + 80] == 20 * sid).all()


def test_import_fills_the_oracle_and_merges(workdir):
    # The exported file itself, filled in by the annotator: names and ids both accepted.
    rows = list(csv.DictReader(open(workdir / "query.csv")))
    fill = {"7": "dog", "3": "0", "9": " frog ", "5": "", "1": "2"}
    for r in rows:
        r["label"] = fill[r["sample_id"]]
    first = _write(workdir / "a.csv", annotate.QUERY_COLUMNS,
                   [[r[c] for c in annotate.QUERY_COLUMNS] for r in rows])
    merged = annotate.import_annotations(first, workdir)
    with pytest.raises(ValueError, match="labels 4 of the 5 queried"):
        annotate.AnnotationOracle.from_workdir(workdir, np.zeros(12))
    # A second file annotates the missing one and corrects sample 3.
    annotate.import_annotations(_write(workdir / "b.csv", ("sample_id", "label"),
                                       [[5, "cat"], [3, "frog"]]), workdir)
    truth = np.arange(12) % 3
    oracle = annotate.AnnotationOracle.from_workdir(workdir, truth)
    assert oracle.query(np.array([7, 3, 9, 5, 1])).tolist() == [1, 2, 2, 0, 2]
    assert oracle.query(np.array([7])).tolist() == [1]
    assert oracle.annotations == 5  # distinct samples, as Oracle counts
    assert oracle.labels_for_evaluation(np.array([4, 5])).tolist() == [1, 2]
    with pytest.raises(ValueError, match="no label"):
        oracle.query(np.array([0]))
    assert merged.name == "annotations.csv"


@pytest.mark.parametrize("header,rows,msg", [
    (("sample_id", "label"), [[7, "dog"], [4, "cat"]], r"bad.csv line 3: sample_id 4 is not in the query"),
    (("sample_id", "label"), [[7, "dog"], [3, "cat"], [7, "cat"]], r"bad.csv line 4: sample_id 7 repeats line 2"),
    (("sample_id", "label"), [[7, "dog"], [3, "horse"]], r"bad.csv line 3: label 'horse' is neither"),
    (("sample_id", "label"), [[7, "3"]], r"bad.csv line 2: label '3' is neither .* \[0, 3\)"),
    (("sample_id", "label"), [[7, "-1"]], r"bad.csv line 2: label '-1'"),
    (("sample_id", "label"), [[7, 1], [3, 1], [9, 1], [5, 1], [1, 1], [1, 1]],
     r"bad.csv line 7: more rows than the labeling budget of 5"),
    (("sample_id", "label"), [[7, "0_1"]], r"bad.csv line 2: label '0_1' is neither"),
    (("sample_id", "label"), [["0_7", "cat"]], r"bad.csv line 2: sample_id '0_7' is not an integer"),
    (("id", "label"), [[7, 1]], r"bad.csv: line 1 lacks the column\(s\) \['sample_id'\]"),
    (("client", "sample_id", "label"), [[1, 7, "cat"]], r"bad.csv line 2: sample_id 7 belongs to client 0"),
    (("sample_id", "label"), [["x7", "cat"]], r"bad.csv line 2: sample_id 'x7' is not an integer"),
    (("client", "sample_id", "label"), [["zero", 7, "cat"]], r"bad.csv line 2: client 'zero' is not an integer"),
])
def test_bad_annotation_files_are_refused(workdir, header, rows, msg):
    bad = _write(workdir / "bad.csv", header, rows)
    with pytest.raises(ValueError, match=msg):
        annotate.import_annotations(bad, workdir)
    assert not (workdir / "annotations.csv").exists()  # nothing merged


def test_missing_files_say_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="fastjax.label export"):
        annotate.read_query(tmp_path)


def test_annotation_oracle_writes_the_query_until_annotated(tmp_path):
    images = np.zeros((10, 4, 4, 1), np.uint8)
    q = annotate.make_query([np.array([2, 4])], NAMES)
    assert annotate.annotation_oracle(tmp_path, q, images[[2, 4]], np.zeros(10)) is None
    assert (tmp_path / "query.csv").exists() and (tmp_path / "query_sheet_000.png").exists()
    annotate.import_annotations(_write(tmp_path / "a.csv", ("sample_id", "label"),
                                       [[2, "dog"], [4, "cat"]]), tmp_path)
    oracle = annotate.annotation_oracle(tmp_path, q, images[[2, 4]], np.zeros(10))
    assert oracle.query(np.array([4, 2])).tolist() == [0, 1]
    # A different query (the config changed): written anew, old annotations set aside.
    q2 = annotate.make_query([np.array([2, 5])], NAMES)
    with pytest.warns(UserWarning, match=r"set aside annotations.csv as .*annotations.stale-"):
        assert annotate.annotation_oracle(tmp_path, q2, images[[2, 5]], np.zeros(10)) is None
    assert annotate.read_query(tmp_path).sample_id.tolist() == [2, 5]
    assert len(list(tmp_path.glob("annotations.stale-*.csv"))) == 1
    assert not (tmp_path / "annotations.csv").exists()


def test_spreadsheet_csv_with_a_byte_order_mark_is_read(workdir):
    """Excel's "CSV UTF-8" starts with a BOM; the header is still sample_id, label."""
    path = workdir / "excel.csv"
    path.write_bytes("\ufeffsample_id,label\r\n7,dog\r\n3,cat\r\n".encode("utf-8"))
    annotate.import_annotations(path, workdir)
    assert annotate.read_annotations(workdir / "annotations.csv",
                                     annotate.read_query(workdir)) == {7: 1, 3: 0}


def test_a_file_that_is_not_utf8_names_itself(workdir):
    path = workdir / "latin1.csv"
    path.write_bytes("sample_id,label\n7,chien\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv: not UTF-8 text .* save the annotations as CSV UTF-8"):
        annotate.import_annotations(path, workdir)
    assert not (workdir / "annotations.csv").exists()


def _fill_sorted(workdir, labels):
    """The annotator's query.csv: labels filled, rows sorted by sample id (a spreadsheet)."""
    rows = sorted(csv.DictReader(open(workdir / "query.csv")), key=lambda r: int(r["sample_id"]))
    for r in rows:
        r["label"] = labels[int(r["sample_id"])]
    _write(workdir / "query.csv", annotate.QUERY_COLUMNS, [[r[c] for c in annotate.QUERY_COLUMNS] for r in rows])


def test_a_sorted_query_csv_keeps_its_annotations(workdir):
    images = np.zeros((5, 8, 8, 3), np.uint8)
    q = annotate.read_query(workdir)
    _fill_sorted(workdir, {7: "dog", 3: "cat", 9: "frog", 5: "cat", 1: "dog"})
    annotate.import_annotations(workdir / "query.csv", workdir)
    before = (workdir / "query.csv").read_text()
    # The job's next run decides the same query (in its own order): it is the same query,
    # the annotations stand, and the filled query.csv is not overwritten, not even on export.
    oracle = annotate.annotation_oracle(workdir, q, images, np.zeros(12))
    assert oracle.query(np.array([1, 3, 5, 7, 9])).tolist() == [1, 0, 0, 1, 2]
    assert annotate.refresh_query(workdir, q, images, rewrite=True) is True
    assert (workdir / "query.csv").read_text() == before
    assert annotate.read_query(workdir).sample_id.tolist() == [7, 3, 9, 5, 1]  # the stored copy
    (workdir / "query.csv").unlink()  # lost: the query (query.json) and annotations stand
    assert annotate.refresh_query(workdir, q, images) is True
    assert (workdir / "query.csv").exists() and (workdir / "annotations.csv").exists()


def test_another_query_sets_aside_filled_files_naming_them(workdir):
    _fill_sorted(workdir, {7: "dog", 3: "cat", 9: "frog", 5: "cat", 1: "dog"})
    annotate.import_annotations(workdir / "query.csv", workdir)
    q2 = annotate.make_query([np.array([2, 4])], NAMES)
    with pytest.warns(UserWarning) as seen:
        assert annotate.refresh_query(workdir, q2, np.zeros((2, 8, 8, 3), np.uint8)) is False
    assert len(seen) == 1
    msg = str(seen[0].message)
    kept = list(workdir.glob("query.earlier-*.csv")) + list(workdir.glob("annotations.stale-*.csv"))
    assert len(kept) == 2 and all(str(p) in msg for p in kept)
    assert "dog" in kept[0].read_text()  # the person's work, intact
    assert annotate.read_query(workdir).sample_id.tolist() == [2, 4]


def test_a_huge_file_is_refused_without_reading_it_whole(workdir):
    """Reading stops one row past the budget: bytes far beyond it are never decoded."""
    path = workdir / "huge.csv"
    rows = "".join(f"{i},cat\n" for i in range(100, 30100))  # ~300 KB of rows ...
    path.write_bytes(f"sample_id,label\n7,dog\n{rows}".encode() + b"\xff\xfe,bad\n")  # ... then not UTF-8
    with pytest.raises(ValueError, match=r"huge.csv line 7: more rows than the labeling budget of 5"):
        annotate.read_annotations(path, annotate.read_query(workdir))


def test_contact_sheets_name_their_clients_and_the_classes(workdir):
    """The footer is text: compare the rendered pixels with PIL drawing the expected
    key (an independent rendering of the same words)."""
    from PIL import ImageDraw

    q = annotate.read_query(workdir)
    footers = annotate._sheet_footers(q, 4)
    assert footers[0].startswith("query_sheet_000.png: samples of clients 0, 2")
    assert footers[1].startswith("query_sheet_001.png: samples of client 2 ")
    assert all("0 cat, 1 dog, 2 frog" in f for f in footers)
    sheet = Image.open(workdir / "query_sheet_001.png").convert("RGB")
    ref = Image.new("RGB", sheet.size, "white")
    draw = ImageDraw.Draw(ref)
    for j, line in enumerate(textwrap.wrap(footers[1], 10 * 96 // 6 - 2)):
        draw.text((2, 110 + j * 14), line, fill="black")
    assert (np.asarray(sheet)[110:] == np.asarray(ref)[110:]).all()


def test_changed_annotations_stop_the_resume_and_import_takes_the_lock(workdir):
    from fastjax import config as config_lib
    from fastjax.federate import checkpoints

    c = config_lib.base_config()
    c.unlock()
    c.labeling.oracle = "annotations"
    c.lock()
    with config_lib.open_run(workdir, c):
        pass  # the export (config.json written, nothing annotated yet)
    annotate.import_annotations(_write(workdir / "a.csv", ("sample_id", "label"),
                                       [[7, "dog"], [3, "cat"], [9, "cat"], [5, "cat"], [1, "cat"]]), workdir)
    digest = annotate.annotations_digest(workdir)
    with config_lib.open_run(workdir, c):
        (workdir / "metrics.jsonl").write_text('{"round": 1}\n')  # trained on them
    annotate.import_annotations(_write(workdir / "b.csv", ("sample_id", "label"), [[9, "frog"]]), workdir)
    assert annotate.annotations_digest(workdir) != digest
    with pytest.raises(checkpoints.RunMismatchError, match=r"annotations.csv changed since this run trained"):
        config_lib.open_run(workdir, c)
    # `fastjax.label import` holds the work directory's lock while it merges.
    root = Path(__file__).resolve().parents[1]
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, time
        fd = os.open({str(workdir / checkpoints.LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"pid {{os.getpid()}}".encode())
        print("LOCKED", flush=True)
        time.sleep(60)""")], stdout=subprocess.PIPE, text=True, cwd=root)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        out = subprocess.run([sys.executable, "-m", "fastjax.label", "import", str(workdir / "b.csv"),
                              f"--workdir={workdir}"], cwd=root, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 2 and f"is in use by pid {holder.pid}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_export_advises_only_the_settings_not_yet_set(tmp_path):
    from fastjax import config as config_lib
    from fastjax.label.__main__ import export

    c = config_lib.base_config()
    c.unlock()
    c.method, c.labeling.oracle = "active", "annotations"
    with pytest.raises(ValueError) as e:
        export(c, tmp_path, progress=False)
    assert str(e.value).endswith("add --config.method=fast") and not (tmp_path / "config.json").exists()
    c.method, c.labeling.oracle = "fast", "simulated"
    with pytest.raises(ValueError, match=r"add --config.labeling.oracle=annotations$"):
        export(c, tmp_path, progress=False)
