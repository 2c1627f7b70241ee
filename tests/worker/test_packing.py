"""Multimodal packing on the tiny demo model, in-process, fp32: a packed batch computes what the
padded batch of the same samples computes (per-sample losses and the step loss), a sample's
logits do not depend on its pack neighbours, and the plan is deterministic within its budgets
and fills >= 95% of the token slots on the benchmark mixture."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from backend.core.samples import IGNORE_INDEX
from backend.core.templates import get_template
from bench.mixture import shapes
from worker.training.callbacks import BatchStats
from worker.training.data import Collator, SupervisedDataset
from worker.training.packing import (
    PackCollator,
    PackedDataset,
    pack_samples,
    per_sample_token_counts,
    plan_packs,
    pop_pack_inputs,
)
from worker.training.train import InternVLTrainer

# image samples of 1 and 3 tiles (max_dynamic_patch 2 + thumbnail) and pure-text ones, with
# answers of different lengths so the per-sample token counts differ
RECORDS = [("red.png", (448, 448), "Name the colour.", "red"),
           ("wide.png", (900, 448), "What is drawn here?", "a yellow square on a wide canvas"),
           (None, None, "Count to five.", "1 2 3 4 5"),
           ("blue.png", (448, 448), "Which colour fills it?", "blue, all over the picture"),
           (None, None, "Say hello.", "hello"),
           ("tall.png", (448, 900), "Describe it.", "a tall green rectangle")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return packing_setup(tmp_path_factory.mktemp("packing"))


def packing_setup(root, dtype=torch.float32):
    """(dataset of RECORDS, the demo model with SDPA, the collator, the pad id); tests/gpu too."""
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    from worker.demo_model import build_demo_model

    model_dir = build_demo_model(root / "demo")
    recs = []
    for i, (name, size, q, a) in enumerate(RECORDS):
        rec = {"id": i, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        if name:
            Image.new("RGB", size, (40 * i, 200 - 30 * i, 90)).save(root / name)
            rec["image"] = name
        recs.append(rec)
    (root / "ann.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    meta = {"tiny": {"root": str(root), "annotation": str(root / "ann.jsonl"), "repeat_time": 1}}
    (root / "meta.json").write_text(json.dumps(meta))
    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = SupervisedDataset(root / "meta.json", tok, get_template("internlm2-chat"), max_seq_length=4096,
                           max_dynamic_patch=2, seed=3)
    assert len(ds) == len(RECORDS)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration.from_pretrained(model_dir, dtype=dtype,
                                                             attn_implementation="sdpa").eval()
    return ds, model, Collator(tok.pad_token_id), tok.pad_token_id


def fake_trainer(one_row: bool) -> SimpleNamespace:
    """What compute_loss reads of the Trainer: one rank, one micro-batch, the token mean (the
    step's weight sum is then its target count)."""
    trainer = SimpleNamespace(stats=BatchStats(), one_row=one_row, fused_ce=False, loss_reduction="token",
                              micro_batches=1, args=SimpleNamespace(world_size=1))
    trainer.token_losses = lambda m, i: InternVLTrainer.token_losses(trainer, m, i)
    return trainer


def run_loss(model, batch: dict, one_row: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The training program's own compute_loss on a batch: (step loss, logits, packing keys)."""
    inputs = dict(batch)
    num_items = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
    pack_keys = {k: inputs[k] for k in ("sample_index",) if k in inputs}
    trainer = fake_trainer(one_row=one_row)
    with torch.no_grad():
        loss, out = InternVLTrainer.compute_loss(trainer, model, inputs, return_outputs=True,
                                                 num_items_in_batch=torch.tensor(float(num_items)))
    return loss, out.logits, pack_keys


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per position t: the loss of predicting labels[t + 1] (0 where it is ignored)."""
    flat = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:],
                                             ignore_index=IGNORE_INDEX, reduction="none")
    return flat


def unpacked_sample_losses(model, ds, collator, order):
    batch = collator([ds[i] for i in order])
    loss, logits, _ = run_loss(model, batch)
    per_tok = token_losses(logits, batch["labels"])
    counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1)
    return loss, {i: float(per_tok[r].sum() / counts[r]) for r, i in enumerate(order)}


def packed_sample_losses(model, ds, collator, packs, one_row: bool = False):
    batch = PackCollator(collator.pad, collator)([pack_samples([ds[i] for i in p]) for p in packs])
    loss, logits, keys = run_loss(model, batch, one_row)
    per_tok = token_losses(logits.reshape(len(packs), -1, logits.shape[-1]), batch["labels"])
    owner = keys["sample_index"][:, 1:]  # the sample each target belongs to
    sums = torch.zeros(owner.max() + 1).index_add_(0, owner[owner >= 0], per_tok[owner >= 0])
    counts = per_sample_token_counts(batch["labels"][:, 1:], owner)
    flat = [i for p in packs for i in p]
    return loss, {i: float(sums[k] / counts[k]) for k, i in enumerate(flat)}


def test_packed_batch_gives_the_per_sample_and_step_losses_of_the_padded_batch(setup):
    ds, model, collator, _ = setup
    order = list(range(len(RECORDS)))
    step_unpacked, per_unpacked = unpacked_sample_losses(model, ds, collator, order)
    packs = [(0, 2, 1), (5, 4), (3,)]  # two rows, the second padded
    step_packed, per_packed = packed_sample_losses(model, ds, collator, packs)
    assert sorted(per_packed) == order
    for i in order:
        assert per_packed[i] == pytest.approx(per_unpacked[i], abs=1e-5), i
    assert float(step_packed) == pytest.approx(float(step_unpacked), abs=1e-5)
    assert len(set(round(v, 3) for v in per_unpacked.values())) == len(order)  # the samples differ


def sample_logits(model, ds, collator, pack, which) -> torch.Tensor:
    """The logits of sample ``which`` inside ``pack`` (a list of dataset indices)."""
    batch = PackCollator(collator.pad, collator)([pack_samples([ds[i] for i in pack])])
    _, logits, _ = run_loss(model, batch)
    start = sum(len(ds[i]["input_ids"]) for i in pack[:pack.index(which)])
    return logits[0, start:start + len(ds[which]["input_ids"])]


def test_a_samples_logits_do_not_change_with_its_pack_neighbours(setup):
    ds, model, collator, _ = setup
    alone = sample_logits(model, ds, collator, [1], 1)
    for pack in ([0, 1], [1, 3], [5, 4, 1], [2, 1, 0]):
        assert torch.allclose(sample_logits(model, ds, collator, pack, 1), alone, atol=1e-5), pack
    unpacked = run_loss(model, collator([ds[1]]))[1][0]
    assert torch.allclose(unpacked, alone, atol=1e-5)


def test_packing_inputs_restart_positions_and_mark_samples(setup):
    ds, _, collator, pad = setup
    batch = PackCollator(pad, collator)([pack_samples([ds[0], ds[2]]), pack_samples([ds[4]])])
    n0, n2, n4 = (len(ds[i]["input_ids"]) for i in (0, 2, 4))
    pos, idx = batch["position_ids"], batch["sample_index"]
    assert pos[0, :n0].tolist() == list(range(n0)) and pos[0, n0:n0 + n2].tolist() == list(range(n2))
    assert idx[0, :n0].eq(0).all() and idx[0, n0:].eq(1).all() and idx[1, :n4].eq(2).all() and idx[1, n4:].eq(-1).all()
    assert pos[1, n4:].tolist() == list(range(n0 + n2 - n4))  # the padding is a segment of its own
    assert batch["cu_seqlens"].tolist() == [0, n0, n0 + n2, n0 + n2 + n4, 2 * (n0 + n2)]
    assert batch["max_seqlen"] == max(n0, n2, n4, n0 + n2 - n4)
    assert batch["attention_mask"].sum() == n0 + n2 + n4
    assert batch["pixel_values"].shape[0] == 1 and batch["image_flags"].tolist() == [1]
    keys = dict(batch)
    pack = pop_pack_inputs(keys)
    assert pack.samples == 3 and "position_ids" not in keys
    with pytest.raises(ValueError, match="target on its first token"):
        pack_samples([ds[0], {**ds[2], "labels": ds[2]["input_ids"]}])


def test_packed_dataset_items_follow_the_plan(setup):
    ds, _, _, _ = setup
    lengths = ds.modality_lengths
    tiles = ds.tile_counts
    plan = plan_packs(lengths, tiles, max_seq_length=1200, max_tiles=3, seed=1)
    packed = PackedDataset(ds, plan)
    assert sorted(i for p in plan.packs for i in p) == list(range(len(ds)))
    for k, p in enumerate(plan.packs):
        item = packed[k]
        assert len(item["input_ids"]) == sum(lengths[i] for i in p) == packed.pack_lengths[k] <= 1200
        assert len(item["pixel_values"]) == sum(tiles[i] for i in p) <= 3


# ---------------------------------------------------------------------------------- the plan
MIXTURE = shapes(4000, seed=0)
LENGTHS = [s.tokens() for s in MIXTURE]
TILES = [s.tiles for s in MIXTURE]


def test_plan_fills_95_percent_of_the_slots_on_the_benchmark_mixture():
    plan = plan_packs(LENGTHS, TILES, max_seq_length=8192, max_tiles=32, seed=42)
    assert plan.efficiency >= 0.95, plan.efficiency
    # the padded path at the recipe's batch of 4 (length-grouped or not) wastes far more
    padded = sum(max(LENGTHS[i:i + 4]) * len(LENGTHS[i:i + 4]) for i in range(0, len(LENGTHS), 4))
    assert sum(LENGTHS) / padded < 0.75


def test_plan_is_a_pure_function_of_the_seed_within_both_budgets():
    plan = plan_packs(LENGTHS, TILES, max_seq_length=8192, max_tiles=16, seed=7)
    again = plan_packs(LENGTHS, TILES, max_seq_length=8192, max_tiles=16, seed=7)
    other = plan_packs(LENGTHS, TILES, max_seq_length=8192, max_tiles=16, seed=8)
    assert plan.packs == again.packs and plan.packs != other.packs
    assert sorted(i for p in plan.packs for i in p) == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in p) <= 8192 and sum(TILES[i] for i in p) <= 16 for p in plan.packs)
    assert plan.tokens == sum(LENGTHS)


def test_sample_over_the_tile_budget_gets_a_pack_of_its_own_and_is_counted():
    plan = plan_packs([100, 200, 300], [2, 9, 1], max_seq_length=1000, max_tiles=4, seed=0)
    assert (1,) in plan.packs and plan.over_tile_budget == 1 and len(plan) == 2
    with pytest.raises(ValueError, match="longer than max_seq_length"):
        plan_packs([1001], [0], max_seq_length=1000, max_tiles=4, seed=0)


# ------------------------------------------------------------------- the flash-attention path
def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A plain-torch stand-in for flash-attention's varlen kernel: causal attention inside each
    [cu[i], cu[i+1]) segment of the one flattened row, from the lengths the trainer passes."""
    if "cu_seq_lens_q" not in kwargs:  # the vision tower: bidirectional over one tile
        assert not module.is_causal
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    cu = kwargs["cu_seq_lens_q"].tolist()
    assert query.shape[0] == 1 and cu == kwargs["cu_seq_lens_k"].tolist() and cu[-1] == query.shape[2]
    assert kwargs["max_length_q"] == max(b - a for a, b in zip(cu, cu[1:], strict=False))
    out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling, enable_gqa=True)
        for a, b in zip(cu, cu[1:], strict=False)], dim=2)
    return out.transpose(1, 2).contiguous(), None


def test_flash_path_runs_the_batch_as_one_row_with_its_sequence_lengths(setup, tmp_path):
    """The flash-attention 2 inputs (one flattened row, cu_seq_lens, max_length) through a
    varlen kernel give the padded batch's step and per-sample losses."""
    from transformers import AttentionInterface, InternVLForConditionalGeneration

    ds, model, collator, pad = setup
    AttentionInterface.register("vl_test_varlen", varlen_attention)
    model.save_pretrained(tmp_path / "m")
    varlen = InternVLForConditionalGeneration.from_pretrained(tmp_path / "m", attn_implementation="vl_test_varlen").eval()
    packs = [(0, 2, 1), (5, 4), (3,)]
    batch = PackCollator(pad, collator)([pack_samples([ds[i] for i in p]) for p in packs])
    num_items = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    trainer = fake_trainer(one_row=True)
    with torch.no_grad():
        loss, out = InternVLTrainer.compute_loss(trainer, varlen, dict(batch), return_outputs=True,
                                                 num_items_in_batch=torch.tensor(float(num_items)))
    assert out.logits.shape[0] == 1  # one row
    step, per = unpacked_sample_losses(model, ds, collator, list(range(len(RECORDS))))
    assert float(loss) == pytest.approx(float(step), abs=1e-5)
    rows = out.logits.reshape(len(packs), -1, out.logits.shape[-1])
    per_tok = token_losses(rows, batch["labels"])
    owner = batch["sample_index"][:, 1:]
    sums = torch.zeros(owner.max() + 1).index_add_(0, owner[owner >= 0], per_tok[owner >= 0])
    counts = per_sample_token_counts(batch["labels"][:, 1:], owner)
    for k, i in enumerate(i for p in packs for i in p):
        assert float(sums[k] / counts[k]) == pytest.approx(per[i], abs=1e-5), i


# ------------------------------------------- torch's own kernels: flex_attention and varlen
def alone_losses(model, ds, collator, order) -> dict[int, float]:
    """Each sample's loss run by itself (a batch of one, SDPA)."""
    return {i: unpacked_sample_losses(model, ds, collator, [i])[1][i] for i in order}


def load_with(tmp_path, model, kernel: str):
    from transformers import InternVLForConditionalGeneration

    from worker.training.attention import per_part

    if not (tmp_path / "m" / "config.json").exists():
        model.save_pretrained(tmp_path / "m")
    return InternVLForConditionalGeneration.from_pretrained(tmp_path / "m", dtype=torch.float32,
                                                            attn_implementation=per_part(kernel)).eval()


def test_flex_attention_pack_equals_each_sample_run_alone(setup, tmp_path):
    """flex_attention (real, forward on the CPU): the trainer's packed inputs (restarting positions,
    no mask, no cache) make transformers build a block mask per sample, so each sample of a
    pack gets the loss it gets alone."""
    ds, model, collator, _ = setup
    flex = load_with(tmp_path, model, "flex_attention")
    assert flex.config.text_config._attn_implementation == "flex_attention"
    assert flex.config.vision_config._attn_implementation == "sdpa"
    packs = [(0, 2, 1), (5, 4), (3,)]
    step, per = packed_sample_losses(flex, ds, collator, packs)
    alone = alone_losses(model, ds, collator, range(len(RECORDS)))
    for i, v in alone.items():
        assert per[i] == pytest.approx(v, abs=1e-5), i
    assert float(step) == pytest.approx(float(unpacked_sample_losses(model, ds, collator, list(alone))[0]), abs=1e-5)


def reference_varlen_kernel(query, key, value, cu_q, cu_k, max_q, max_k, scale):
    """What torch's varlen_attn computes, on the CPU: causal attention within each [cu[i], cu[i+1])
    of ``[T, H, D]`` tensors, key/value heads shared by groups of query heads."""
    assert cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k) and int(cu_q[-1]) == query.shape[0]
    assert max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
    out = [torch.nn.functional.scaled_dot_product_attention(
        query[a:b].transpose(0, 1), key[a:b].transpose(0, 1), value[a:b].transpose(0, 1), is_causal=True,
        scale=scale, enable_gqa=True).transpose(0, 1) for a, b in zip(cu_q.tolist(), cu_q[1:].tolist(), strict=False)]
    return torch.cat(out)


def test_varlen_attention_function_runs_packs_as_one_row_and_unpads_padded_batches(setup, tmp_path, monkeypatch):
    """The ``varlen`` attention function registered with transformers (layouts, GQA heads, the
    cumulative lengths of one flattened row, the unpadding of a padded batch) with a plain-torch
    kernel in place of torch's varlen_attn, whose flash kernels run on CUDA only
    (tests/gpu/test_attention_gpu.py runs the real one against SDPA in bf16)."""
    from worker.training import attention

    ds, model, collator, _ = setup
    monkeypatch.setattr(attention, "varlen_kernel", reference_varlen_kernel)
    varlen = load_with(tmp_path, model, "varlen")
    assert varlen.config.text_config._attn_implementation == "varlen"
    assert varlen.config.vision_config._attn_implementation == "sdpa"
    assert model.config.text_config.num_key_value_heads < model.config.text_config.num_attention_heads  # GQA
    packs = [(0, 2, 1), (5, 4), (3,)]
    step, per = packed_sample_losses(varlen, ds, collator, packs, one_row=True)
    alone = alone_losses(model, ds, collator, range(len(RECORDS)))
    for i, v in alone.items():
        assert per[i] == pytest.approx(v, abs=1e-5), i
    # unpacked, right-padded rows: the real tokens are unpadded into sequences of their own
    order = list(range(len(RECORDS)))
    padded_step, padded = unpacked_sample_losses(varlen, ds, collator, order)
    for i in order:
        assert padded[i] == pytest.approx(alone[i], abs=1e-5), i
    assert float(padded_step) == pytest.approx(float(step), abs=1e-5)
    varlen.save_pretrained(tmp_path / "saved")  # the saved model loads anywhere: no kernel name in it
    assert "varlen" not in (tmp_path / "saved" / "config.json").read_text()


def test_varlen_kernel_refuses_fp32_with_a_clear_message():
    from worker.training.attention import varlen_kernel

    q = torch.zeros(4, 2, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="varlen runs in bf16 or fp16"):
        varlen_kernel(q, q, q, cu, cu, 4, 4, None)


@pytest.mark.parametrize("torch_release", ["2.10", "2.11", "2.12"])
def test_varlen_kernel_speaks_each_torch_releases_signature(monkeypatch, torch_release):
    """torch's varlen_attn changed its keywords release by release (the docs of 2.10, 2.11 and
    2.12): causality, scale and GQA reach each one in the form it takes."""
    import torch.nn.attention.varlen as varlen_module

    from worker.training.attention import varlen_kernel

    seen = {}

    def v210(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        seen.update(is_causal=is_causal, heads=(query.shape[1], key.shape[1]), q=query)
        return query

    def v211(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
             window_size=(-1, -1)):
        seen.update(window_size=window_size, scale=scale, heads=(query.shape[1], key.shape[1]))
        return query

    def v212(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
             window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
        seen.update(window_size=window_size, scale=scale, gqa=enable_gqa, heads=(query.shape[1], key.shape[1]))
        return query

    monkeypatch.setattr(varlen_module, "varlen_attn", {"2.10": v210, "2.11": v211, "2.12": v212}[torch_release])
    q = torch.ones(6, 4, 8, dtype=torch.bfloat16)
    kv = torch.ones(6, 2, 8, dtype=torch.bfloat16)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    varlen_kernel(q, kv, kv, cu, cu, 4, 4, 0.5)
    if torch_release == "2.10":
        assert seen["is_causal"] and seen["heads"] == (4, 4)  # no enable_gqa: key/value heads repeated
        assert float(seen["q"][0, 0, 0]) == pytest.approx(0.5 / 8**-0.5, rel=1e-2)  # no scale: the query carries it
    else:
        assert seen["window_size"] == (-1, 0) and seen["scale"] == 0.5
        assert seen["heads"] == ((4, 2) if torch_release == "2.12" else (4, 4))
