"""The train-time gradient store equals the index built afterwards from the same checkpoint and
optimizer state."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bergson_core.config import BuildConfig
from bergson_core.config.eval import TrainOptions
from bergson_core.data.corpus import load_corpus, tokenize_rows
from bergson_core.gradients.extract import compute_gradients, tracked_modules
from bergson_core.gradients.normalizers import load_normalizers
from bergson_core.index.store import Index, grad_matrix
from bergson_core.model.loading import load_model
from bergson_core.train.callback import GradientStore
from bergson_core.train.trainer import total_steps, train
from tests.core.helpers import write_jsonl
from tests.eval import helpers


def built_afterwards(cfg: BuildConfig, model_dir: str, state_path: str) -> np.ndarray:
    """Gradients [N, D] of the corpus from the saved checkpoint: model and optimizer state read back
    from disk, through the build's gradient path."""
    bcfg = cfg.model_copy(update={"model": model_dir})
    loaded = load_model(bcfg)
    modules = tracked_modules(loaded, bcfg)
    norms = load_normalizers(state_path, loaded.model, modules, "adam")
    corpus = load_corpus(bcfg.dataset, bcfg.split, {})
    docs = tokenize_rows(corpus, 0, len(corpus), loaded.tokenizer, bcfg.max_length, bcfg.text_column)
    grads, _ = compute_gradients(loaded, modules, docs, bcfg, bcfg.batch_tokens, normalizers=norms)
    return grads


def stored(url: str) -> np.ndarray:
    index = Index(url)
    assert len(index.manifests()) == index.meta()["num_shards"]
    return np.concatenate([grad_matrix(t) for _, t in index.iter_shards()])


@pytest.mark.parametrize("projection_dim", [0, 4])
def test_project_trainer_hook_equals_index_built_afterwards(tmp_path, projection_dim):
    tok = helpers.tokenizer()
    texts = helpers.TEXTS[:8]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in texts])
    model = helpers.model(tok, dtype=torch.float64)
    opts = TrainOptions(optimizer="adamw", lr=0.01, epochs=2, batch_size=4, checkpoint_every=2, train_loss="sum")
    cfg = BuildConfig(index=str(tmp_path / "store"), model="(in memory)", dataset=corpus, dtype="float64",
                      device="cpu", projection_dim=projection_dim, grad_dtype="float32", shard_size=3,
                      progress=False)
    store = GradientStore(cfg, tok, every=opts.checkpoint_every, last_step=total_steps(len(texts), opts),
                          checkpoint_dir=str(tmp_path / "run"))
    train(model, helpers.docs(tok, texts), opts, checkpoint_dir=str(tmp_path / "run"), tokenizer=tok,
          after_step=store.after_step)
    assert [os.path.basename(u) for u in store.written] == ["step-000002", "step-000004"]
    for step, url in zip((2, 4), store.written):
        ckpt = str(tmp_path / "run" / f"checkpoint-{step}")
        want = built_afterwards(cfg, os.path.join(ckpt, "model"), ckpt)
        got = stored(url)
        assert np.abs(want).max() > 1e-3
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
        meta = Index(url).meta()
        assert meta["spec"]["model"] == os.path.join(ckpt, "model")  # scoring and tracin find the checkpoint
        assert meta["train_time"] == {"step": step, "checkpoint": ckpt, "normalizer": "adam"}
    # the weights moved between the two stores: a real per-checkpoint store, not one copy
    assert not np.allclose(stored(store.written[0]), stored(store.written[1]))


def test_hugging_face_trainer_callback_equals_index_built_afterwards(tmp_path):
    """A transformers.Trainer run (CPU, tiny GPT-2, torch AdamW) with the callback: every saved
    checkpoint's stored gradients equal those built from checkpoint-N and its optimizer.pt."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from bergson_core.train.callback import hf_callback

    tok = helpers.tokenizer()
    texts = helpers.TEXTS[:8]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in texts])
    model = helpers.model(tok, dtype=torch.float32).train()
    cfg = BuildConfig(index=str(tmp_path / "store"), model="(in memory)", dataset=corpus, dtype="float32",
                      device="cpu", projection_dim=4, grad_dtype="float32", shard_size=4, progress=False)
    store = GradientStore(cfg, tok)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=4, num_train_epochs=2,
                             learning_rate=0.01, save_strategy="steps", save_steps=2, logging_strategy="no",
                             report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0)
    data = [{"input_ids": tok([t])["input_ids"][0]} for t in texts]
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[hf_callback(store)],
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.train()
    assert [os.path.basename(u) for u in store.written] == ["step-000002", "step-000004"]
    for step, url in zip((2, 4), store.written):
        ckpt = str(tmp_path / "hf" / f"checkpoint-{step}")
        want = built_afterwards(cfg, ckpt, ckpt)  # the Trainer's own folder and optimizer.pt
        got = stored(url)
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        assert Index(url).meta()["spec"]["model"] == ckpt


def test_stored_index_is_the_one_bergson_build_writes(tmp_path):
    """Through the real build path (--model CHECKPOINT/model --optimizer-state CHECKPOINT): the same
    spec hash and the same rows as the train-time store."""
    from bergson_core.index.build import build_shard, prepare_build

    tok = helpers.tokenizer()
    texts = helpers.TEXTS[:6]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in texts])
    model = helpers.model(tok, dtype=torch.float64)
    opts = TrainOptions(optimizer="adamw", lr=0.01, epochs=1, batch_size=3, train_loss="sum")
    cfg = BuildConfig(index=str(tmp_path / "store"), model="(in memory)", dataset=corpus, dtype="float64",
                      device="cpu", projection_dim=4, grad_dtype="float32", shard_size=4, progress=False)
    run = str(tmp_path / "run")
    store = GradientStore(cfg, tok, last_step=total_steps(len(texts), opts), checkpoint_dir=run)
    train(model, helpers.docs(tok, texts), opts, checkpoint_dir=run, tokenizer=tok, after_step=store.after_step)
    ckpt = os.path.join(run, "checkpoint-2")
    bcfg = cfg.model_copy(update={"index": str(tmp_path / "built"), "model": os.path.join(ckpt, "model"),
                                  "optimizer_state": ckpt})
    plan = prepare_build(bcfg)
    for shard, start, stop in plan.missing():
        build_shard(bcfg, shard, start, stop)
    stored_meta = Index(store.written[0]).meta()
    assert stored_meta["spec_hash"] == plan.meta["spec_hash"]
    assert stored_meta["model_fingerprint"] == plan.meta["model_fingerprint"]
    want = stored(str(tmp_path / "built"))
    np.testing.assert_allclose(stored(store.written[0]), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
