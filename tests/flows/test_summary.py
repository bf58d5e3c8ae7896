"""A preprocessing run's summary: the flow's typed object, its dict and its markdown."""

from __future__ import annotations

from flows.summary import FAILURES_LISTED, RunSummary

#: The keys ``preprocess_dataset`` returned before the summary was typed, in order.
KEYS = [
    "run_id", "flow_run", "flow_run_id", "store", "pipeline_hash", "inputs", "ok", "failed",
    "skipped", "batches", "broken_batches", "rows_in_store", "seconds", "images_per_s",
    "failures", "dashboard", "report", "scored", "sheet", "store_version", "headers_refreshed",
]  # fmt: skip


def _summary(**changes) -> RunSummary:
    fields = dict(
        run_id="abc", flow_run=None, flow_run_id=None, store="/data/store", pipeline_hash="p1",
        inputs=3, ok=2, failed=1, skipped=0, batches=1, broken_batches=[], rows_in_store=3,
        seconds=2.0, images_per_s=1.5, failures=[("bad.png", "DecodeError: no image")],
        dashboard=None, report=None, scored=0,
    )  # fmt: skip
    return RunSummary(**{**fields, **changes})


def test_the_dict_keeps_the_keys_the_flow_returned():
    summary = _summary(store_version=4)
    out = summary.to_dict()
    assert list(out) == KEYS
    assert out["store_version"] == 4 and out["sheet"] is None and out["headers_refreshed"] == 0


def test_markdown_heads_with_the_run_links_the_store_and_lists_failures():
    text = _summary(flow_run="brave-fox", sheet="/data/store/sheet.png").markdown(
        thumbnail="data:image/jpeg;base64,AAAA"
    )
    lines = text.splitlines()
    assert lines[0] == "# Preprocessing run brave-fox"
    assert "[/data/store](file:///data/store) (pipeline `p1`, 3 rows; run id `abc`)" in text
    assert "| 3 | 2 | 1 | 0 | 1 | 2.0 | 1.5 |" in lines
    assert "![comparison sheet](data:image/jpeg;base64,AAAA)" in lines
    assert "| bad.png | DecodeError: no image |" in lines
    many = [(f"f{i}.png", "E") for i in range(FAILURES_LISTED + 5)]
    text = _summary(failures=many, store="s3://b/store").markdown()
    assert text.startswith("# Preprocessing run abc\n")  # no flow run: the run id
    assert "[s3://b/store](s3://b/store)" in text and "Sample of" not in text
    assert sum(line.startswith("| f") for line in text.splitlines()) == FAILURES_LISTED
