"""The export's block paths (SQLite: column blocks joined by Arrow; PostgreSQL: COPY) agree with each
other and with the member list across block boundaries, splits and erased members."""

from __future__ import annotations

import io

from tests.factories import approved_dataset, export_records, freeze, set_status, stdlib_manifest


def test_parquet_and_jsonl_agree_across_blocks_splits_and_erasure(api, monkeypatch):
    from app.snapshots import export

    ds, _ = approved_dataset(api, 23)
    snap = freeze(api, ds, validation_fraction=0.3, seed=5)
    recs, _ = export_records(api, snap["id"])
    set_status([recs[3]["example_id"], recs[17]["example_id"]], "erased")
    # Blocks of 4 members: several keyset steps, a short last one, erased members inside blocks.
    real = export.iter_column_blocks
    monkeypatch.setattr(export, "iter_column_blocks", lambda plan, block_rows=5000: real(plan, block_rows=4))
    import pandas as pd

    for split in ("all", "train", "validation"):
        lines, r = export_records(api, snap["id"], split=split)
        assert r.headers["X-Erased-Omitted"] == "2"
        assert [x["example_id"] for x in lines] == sorted(x["example_id"] for x in recs
                                                          if split in ("all", x["split"])
                                                          and x["example_id"] not in (recs[3]["example_id"],
                                                                                      recs[17]["example_id"]))
        assert stdlib_manifest(lines) == r.headers["X-Export-Manifest-SHA256"]
        pr = api.as_("trainer").get(f"/v1/snapshots/{snap['id']}/export", params={"format": "parquet", "split": split})
        assert pr.status_code == 200
        df = pd.read_parquet(io.BytesIO(pr.content))
        assert df["example_id"].tolist() == [x["example_id"] for x in lines]
        assert df["revision_id"].tolist() == [x["revision_id"] for x in lines]
        assert df["split"].tolist() == [x["split"] for x in lines]
        assert df["content_sha256"].tolist() == [x["content_sha256"] for x in lines]
        assert df[["instruction", "input", "output"]].to_dict("records") == [
            {k: x["content"].get(k) for k in ("instruction", "input", "output")} for x in lines]
