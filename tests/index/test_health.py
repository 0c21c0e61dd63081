"""index_report reads shard numbers from file names of any width: from shard 100000 on a complete
shard is not an orphan (and `status --repair` must not delete it)."""

import numpy as np

from bergson_core.index.health import index_report
from bergson_core.index.store import Index, shard_name, shard_number


def test_shard_number_any_width():
    assert shard_number("shard-00007.arrow") == 7
    assert shard_number("shard-99999.json") == 99999
    assert shard_number("grads/shard-100000.arrow") == 100000
    assert shard_number("shard-1234567.arrow") == 1234567
    assert shard_number("shard-00001.arrow.tmp-ab12cd34") is None
    assert shard_number(shard_name(100001) + ".arrow") == 100001


def test_report_past_shard_99999(tmp_path):
    index = Index(str(tmp_path / "idx"))
    index.write_meta({"spec": {"model": "m", "projection_dim": 2}, "spec_hash": "h", "dataset": {"rows": 3},
                      "grad_dtype": "float32", "row_width": 4, "modules": [], "num_shards": 100002})
    rows = np.ones((1, 4), dtype=np.float32)
    for i in (100000, 100001):
        index.write_shard(i, i, [str(i)], [2], rows, "float32")
    orphan = index.shard_path(99999)
    index.fs.pipe_file(orphan, b"left by a killed writer")  # a data file without its manifest
    report = index_report(index, verify=True)
    assert report["shards_complete"] == 2 and report["shards_corrupt"] == []
    assert report["orphan_files"] == ["shard-99999.arrow"]
    assert report["shard_names"] == ["shard-100000", "shard-100001"]
