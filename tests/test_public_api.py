"""The public API of bergson_core (build, fit, score, open_index) runs a whole command in-process,
with the same results as the CLI's steps; importing the package does not import torch."""

import subprocess
import sys

import bergson_core as bc
from bergson_core.model.tiny import save_tiny


def test_import_is_light():
    code = "import sys, bergson_core; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_build_fit_score_open(tmp_path):
    texts = [f"the {w} and the {v} went home" for w in ("cat", "dog", "violin", "candle")
             for v in ("moon", "river", "song")]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(f'{{"text": "{t}"}}\n' for t in texts))
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"text": "the violin and the song"}\n')
    model = save_tiny(str(tmp_path / "model"), "gpt2", texts, hidden=16, layers=1)
    index = str(tmp_path / "idx")

    built = bc.build(index=index, model=model, dataset=str(corpus), shard_size=5, projection_dim=4,
                     device="cpu", progress=False)
    assert built["shards"] == 3 and built["computed"] == 3 and built["documents"] == len(texts)
    assert bc.build(index=index, model=model, dataset=str(corpus), shard_size=5, projection_dim=4,
                    device="cpu", progress=False)["computed"] == 0  # a rerun computes nothing

    ix = bc.open_index(index)
    assert len(ix.manifests()) == 3 and ix.meta()["num_shards"] == 3

    fitted = bc.fit(index=index, strategy="ekfac", stats_source="rows", device="cpu", progress=False)
    assert fitted["strategy"] == "ekfac" and fitted["fingerprint"]

    plain = bc.score(index=index, queries=str(queries), top_k=3, device="cpu", progress=False)
    pre = bc.score(index=index, queries=str(queries), top_k=3, device="cpu", progress=False, metric="inner",
                   preconditioner="ekfac", output=str(tmp_path / "pre"))
    assert len(plain["rows"]) == 3 and len(pre["rows"]) == 3
    assert pre["preconditioner"]["strategy"] == "ekfac"
