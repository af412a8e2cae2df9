"""Human annotation: the query list round-trips through CSV and contact sheets, and each
bad annotation file fails with one line naming the file and the line."""

import csv

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
    assert sheet.shape == (96 + 14, 10 * 96, 3)
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
     r"bad.csv line 7: 6 rows but the labeling budget is 5"),
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
    assert annotate.annotation_oracle(tmp_path, q2, images[[2, 5]], np.zeros(10)) is None
    assert annotate.read_query(tmp_path).sample_id.tolist() == [2, 5]
    assert (tmp_path / "annotations.stale.csv").exists()
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
