"""The time-to-accuracy tricks: alternating flip, Muon with weight normalisation, the speed94 recipes,
compilation outside the clock, and the helpers of benchmarks/time_to_accuracy.py."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from fasttrain.augment import AugmentConfig, AugmentSampler
from fasttrain.augment.reference import alternating_flip_bits
from fasttrain.config import ConfigError, RunConfig, resolve
from fasttrain.optim import MuonWithAux, newton_schulz_dtype, zeropower_newton_schulz

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


# ============================================================================ alternating flip
def test_alternating_flip_is_a_fixed_random_phase_per_image():
    keys = torch.arange(20_000)
    even, odd = alternating_flip_bits(keys, 3, 0), alternating_flip_bits(keys, 3, 1)
    assert abs(even.float().mean().item() - 0.5) < 0.02  # half the images start flipped
    assert torch.equal(odd, ~even)  # every image alternates between epochs
    assert torch.equal(alternating_flip_bits(keys, 3, 2), even)  # the phase is fixed
    other_seed = alternating_flip_bits(keys, 4, 0)
    assert 0.45 < (other_seed != even).float().mean().item() < 0.55  # seeds give independent phases
    shuffled = torch.randperm(len(keys))
    assert torch.equal(alternating_flip_bits(keys[shuffled], 3, 0), even[shuffled])  # batch order irrelevant


def test_sampler_alternating_flip_needs_and_uses_the_keys():
    cfg = AugmentConfig(crop_pad=2, flip=True, alternating_flip=True)
    sampler = AugmentSampler(cfg, seed=7)
    with pytest.raises(ValueError, match="dataset indices"):
        sampler.sample(8, 32, 32)
    keys = torch.tensor([5, 900, 3, 42, 17, 8, 1000, 2])
    p0 = sampler.sample(8, 32, 32, keys=keys, epoch=0)
    p1 = sampler.sample(8, 32, 32, keys=keys, epoch=1)
    assert torch.equal(p0.flip, alternating_flip_bits(keys, 7, 0))
    assert torch.equal(p1.flip, ~p0.flip)
    assert not torch.equal(p0.offset, p1.offset)  # the translate stays random per batch
    no_flip = AugmentSampler(AugmentConfig(flip=False, alternating_flip=True), seed=7)
    assert not no_flip.sample(8, 32, 32).flip.any()  # flip off wins; no keys needed


def test_tensor_pipeline_reports_each_batch_indices():
    from fasttrain.pipelines.tensor import TensorPipeline

    images = torch.arange(37, dtype=torch.uint8).view(37, 1, 1, 1).expand(37, 4, 4, 3).contiguous()
    pipe = TensorPipeline(images.numpy(), np.arange(37), 8, seed=1)
    seen = []
    for x, y in pipe:
        keys = pipe.batch_indices
        assert torch.equal(y, keys.to(torch.int64))
        assert torch.equal(x[:, 0, 0, 0].long(), keys.long())
        seen.append(keys)
    assert sorted(torch.cat(seen).tolist()) == list(range(37))


def test_alternating_flip_is_refused_where_no_indices_exist():
    with pytest.raises(ConfigError, match="--alternating-flip.*--pipeline tensor"):
        RunConfig(alternating_flip=True, pipeline="ffcv").validate()
    RunConfig(alternating_flip=True, pipeline="tensor").validate()


# ============================================================================ Muon, airbench94_muon style
def test_muon_weight_norm_step_matches_the_formula():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, bias=False)
    w0 = conv.weight.detach().clone()
    grad = torch.randn_like(w0)
    conv.weight.grad = grad.clone()
    lr, mom = 0.24, 0.6
    opt = MuonWithAux([dict(params=[conv.weight], lr=lr, momentum=mom, weight_decay=0.5, use_muon=True,
                            ns_steps=3, weight_norm=True)], nesterov=True, ns_dtype=torch.bfloat16)
    opt.step()
    g = grad.reshape(16, -1)
    buf = torch.zeros_like(g).lerp_(g, 1 - mom)
    update = zeropower_newton_schulz(g.lerp(buf, mom), 3).float().view_as(w0)
    normed = w0 * (math.sqrt(16) / w0.norm())
    expected = normed * (1 - lr * 0.5) - lr * update
    torch.testing.assert_close(conv.weight.detach(), expected)
    # 3 Newton-Schulz steps are not 5: the option reaches the orthogonalisation
    assert not torch.allclose(zeropower_newton_schulz(g, 3), zeropower_newton_schulz(g, 5))


def test_muon_weight_norm_keeps_filter_norms_fixed_over_steps():
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, bias=False)
    opt = MuonWithAux([dict(params=[conv.weight], lr=0.01, momentum=0.6, weight_decay=0.0, use_muon=True,
                            ns_steps=3, weight_norm=True)], nesterov=True)
    for _ in range(20):
        conv.weight.grad = torch.randn_like(conv.weight)
        opt.step()
    # renormalised to sqrt(16) = 4 before each small step: the norm stays near 4, not drifting
    assert abs(conv.weight.norm().item() - 4.0) < 0.1


# ============================================================================ recipes
def test_speed94_recipe_is_airbench94_muon_in_batch_mean_units():
    cfg = resolve("airbench", "speed94", {})
    assert (cfg.optimizer, cfg.muon_lr, cfg.muon_momentum, cfg.muon_ns_steps) == ("muon", 0.24, 0.6, 3)
    assert cfg.muon_weight_norm and cfg.alternating_flip and cfg.flip and cfg.compile and cfg.channels_last
    assert (cfg.batch_size, cfg.epochs, cfg.crop_pad, cfg.label_smoothing, cfg.tta) == (2000, 8, 2, 0.2,
                                                                                        "flip_translate")
    # summed-loss rates per sample x batch 2000: head 0.67, biases 0.053; decay 0.004 shrink per step
    assert math.isclose(cfg.lr, 0.67 * 2000) and math.isclose(cfg.lr * cfg.bias_lr_scale, 0.053 * 2000)
    assert math.isclose(cfg.lr * cfg.weight_decay, 2e-6 * 2000)
    cpu = resolve("airbench", "speed94-cpu", {})
    assert cpu.batch_size * cpu.accum_steps == 2000 and not cpu.compile  # the same optimiser step
    assert resolve("resnet9", "resnet9-speed", {}).alternating_flip


def test_airbench_muon_head_variant():
    from fasttrain.models import create_model

    torch.manual_seed(0)
    net = create_model("airbench", 10, width=0.25, logit_scale=1 / 64, head_unit_std=True)
    linear = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    assert abs(linear.weight.std().item() - 1.0) < 1e-5
    assert net.head[-1].scale == 1 / 64


def test_speed94_param_groups_put_every_conv_filter_under_muon():
    from fasttrain.models import create_model
    from fasttrain.optim import param_groups

    cfg = resolve("airbench", "speed94", {})
    net = create_model("airbench", 10, width=0.25, **cfg.model_kwargs)
    groups = param_groups(net, cfg)
    muon = [g for g in groups if g["use_muon"]]
    assert len(muon) == 1 and muon[0]["weight_norm"] and muon[0]["ns_steps"] == 3
    trainable_filters = [p for p in net.parameters() if p.dim() == 4 and p.requires_grad]
    assert {id(p) for p in muon[0]["params"]} == {id(p) for p in trainable_filters}
    assert all(p is not net.whiten.weight for p in trainable_filters)  # the whitening layer stays frozen


# ============================================================================ compile outside the clock
def test_compile_warmup_leaves_the_model_and_rng_untouched():
    from fasttrain.models import create_model
    from fasttrain.runtime import compile_warmup

    torch.manual_seed(0)
    net = create_model("airbench", 10, width=0.25)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append((len(i[0]), m.whiten.bias.requires_grad)))
    seconds = compile_warmup(net, net, [(4, 3, 32, 32), (3, 3, 32, 32)], [0, 5], torch.float32,
                             contextlib.nullcontext, 10, torch.device("cpu"))
    # every batch size in every trainable-set variant (the whitening bias trains for 3 epochs only)
    assert calls == [(4, True), (3, True), (4, False), (3, False)]
    assert seconds >= 0
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


# ============================================================================ benchmark helpers
def test_time_to_reach_and_ratios_at_equal_accuracy():
    tta = load_benchmark("time_to_accuracy")
    curve = [{"epoch_s": 10.0, "test_acc": 0.5}, {"epoch_s": 10.0, "test_acc": 0.89},
             {"epoch_s": 10.0, "test_acc": 0.91}]
    assert tta.time_to_reach(curve, 0.9) == 30.0
    assert tta.time_to_reach(curve, 0.89) == 20.0
    assert tta.time_to_reach(curve, 0.95) is None
    refs = [{"train_s": 40.0, "eval_s": 4.0}, {"train_s": 40.0, "eval_s": 4.0}]
    ours = [{"train_s": 20.0, "eval_s": 2.0}, {"train_s": 18.0, "eval_s": 4.0}]
    ratios = tta.per_seed_ratios(refs, ours, [20.0, 18.0])
    assert ratios["total_per_seed"] == [2.0, 2.0] and ratios["total"] == {"mean": 2.0, "std": 0.0}
    assert ratios["equal_accuracy_per_seed"] == [2.0, 2.0] and ratios["equal_accuracy"]["mean"] == 2.0
    assert tta.per_seed_ratios(refs, ours, [20.0, None])["equal_accuracy"] is None


def test_report_of_a_partial_run_and_resume_only_of_the_same_setup(tmp_path):
    """A CPU benchmark takes hours: the report is written after every run, shows one seed as n=1 (not
    '± 0.00'), and --resume takes an earlier report's runs only when it measured the same setup."""
    tta = load_benchmark("time_to_accuracy")
    ours = [{"acc_tta": 0.9, "acc": 0.89, "train_s": 100.0, "eval_s": 10.0,
             "curve": [{"epoch_s": 50.0, "test_acc": 0.8}, {"epoch_s": 50.0, "test_acc": 0.9}]}]
    refs = {"airbench94_muon": [{"acc_tta": 0.91, "acc": 0.895, "train_s": 200.0, "eval_s": 10.0, "dtype": "fp32"}],
            "airbench94": []}  # not run yet
    setup = {"recipe": "speed94-cpu", "device": "cpu (2 threads)", "data": str(tmp_path), "epochs": None}
    meta = dict(setup, torch="2", commit="abc", train_subset=None, warmup_s={"ours": 1.0})
    lines = tta.write_report(tmp_path, "report", meta, ours, refs)
    text = "\n".join(lines)
    assert "90.00% (n=1)" in text and "± 0.00" not in text
    assert "vs airbench94_muon (1 seed): train + TTA eval **1.91x**" in text  # 210 / 110
    assert text.count("**1.91x**") == 2  # at equal accuracy too: our curve reached 0.895 at 100 s
    assert "vs airbench94 " not in text and "vs airbench94:" not in text  # no runs, no ratio

    earlier = tta.earlier_runs(tmp_path / "report.json", setup, probe_s=1.0)
    assert earlier["ours_runs"][0]["train_s"] == 100.0
    assert earlier["references"]["airbench94_muon"]["runs"][0]["train_s"] == 200.0
    with pytest.raises(SystemExit, match="epochs: None there, 4 now"):
        tta.earlier_runs(tmp_path / "report.json", dict(setup, epochs=4), probe_s=1.0)
    assert tta.earlier_runs(tmp_path / "missing.json", setup, probe_s=1.0) is None


def test_resume_refuses_the_runs_of_a_machine_of_another_speed(tmp_path):
    """Two cloud machines with the same CPU name and core count differed by 45% in speed: a resumed report
    mixes in only runs of a machine whose speed probe is within 10% of this one's."""
    tta = load_benchmark("time_to_accuracy")
    setup = {"recipe": "speed94-cpu", "device": "cpu (2 threads)", "data": str(tmp_path), "epochs": None}
    ours = [{"acc_tta": 0.9, "acc": 0.89, "train_s": 100.0, "eval_s": 10.0, "curve": [{"epoch_s": 100.0,
                                                                                       "test_acc": 0.89}]}]
    meta = dict(setup, torch="2", commit="abc", train_subset=None, probe_s=0.50, warmup_s={"ours": 1.0})
    tta.write_report(tmp_path, "report", meta, ours, {})
    assert tta.earlier_runs(tmp_path / "report.json", setup, probe_s=0.53)["probe_s"] == 0.50  # noise
    with pytest.raises(SystemExit, match=r"a machine 1\.40x as fast as this one.*0\.500 s there, 0\.700 s here"):
        tta.earlier_runs(tmp_path / "report.json", setup, probe_s=0.70)
    probe = tta.machine_probe_s(torch.device("cpu"))
    assert 0 < probe < 60


def test_export_airbench_data_is_what_airbench_reads(cifar_tensor_slice, tmp_path):
    from fasttrain.data.tensor_format import load_split, read_meta

    tta = load_benchmark("time_to_accuracy")
    tta.export_airbench_data(str(cifar_tensor_slice), str(tmp_path / "cifar10"))
    for split in ("train", "test"):
        d = torch.load(tmp_path / "cifar10" / f"{split}.pt", weights_only=True)
        s = load_split(cifar_tensor_slice, split)
        assert d["images"].dtype == torch.uint8 and d["images"].shape == s.images.shape  # NHWC
        assert torch.equal(d["images"], torch.from_numpy(np.asarray(s.images)))
        assert d["labels"].dtype == torch.int64 and d["labels"].tolist() == list(s.labels)
        assert d["classes"] == list(read_meta(cifar_tensor_slice)["classes"])
    assert not list((tmp_path / "cifar10").glob("*.tmp"))


@pytest.mark.slow
def test_speed94_cpu_trains_end_to_end_with_its_tricks(cifar_tensor_slice, tmp_path):
    """The CPU recipe on the real slice: alternating flips reach the augmentation, accumulation makes one
    optimiser step per 4 micro-batches, and the Muon filters keep their normalised scale."""
    from fasttrain.augment import reference
    from fasttrain.train import train

    cfg = resolve("airbench", "speed94-cpu", dict(data=str(cifar_tensor_slice), out=str(tmp_path / "run"),
                                                  device="cpu", epochs=2, batch_size=50, tta="none",
                                                  model_kwargs={"width": 0.25, "logit_scale": 1 / 64,
                                                                "head_unit_std": True}))
    flips: dict[int, dict[int, bool]] = {}
    original = reference.AugmentSampler.sample

    def recording(self, n, h, w, *, epoch=0, keys=None, **kw):
        params = original(self, n, h, w, epoch=epoch, keys=keys, **kw)
        flips.setdefault(epoch, {}).update(zip(keys.tolist(), params.flip.tolist()))
        return params

    reference.AugmentSampler.sample = recording
    try:
        summary = train(cfg, quiet=True)
    finally:
        reference.AugmentSampler.sample = original
    assert summary["steps"] == 2 * 6 and math.isfinite(summary["test_loss"])
    assert set(flips[0]) == set(flips[1]) and len(flips[0]) == 300
    assert all(flips[1][k] != flips[0][k] for k in flips[0])  # each image flipped in exactly one epoch
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    filters = [v for k, v in ckpt["model"].items() if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    # each filter bank was renormalised to sqrt(out channels) before its last (small) step
    assert all(abs(f.norm().item() / math.sqrt(len(f)) - 1) < 0.2 for f in filters)


def test_compile_defaults_on_for_cuda_only():
    from fasttrain.runtime import resolve_compile

    assert resolve_compile(None, torch.device("cuda")) and not resolve_compile(None, torch.device("cpu"))
    assert resolve_compile(True, torch.device("cpu")) and not resolve_compile(False, torch.device("cuda"))
    assert RunConfig().compile is None


TINY_MODEL = "test_speed_tiny"


@contextlib.contextmanager
def tiny_model_registered():
    """A conv-BN-ReLU net small enough to compile in seconds on a CPU; registered for one test only,
    so the zoo's model list stays exact."""
    from fasttrain.models.registry import MODELS, register_model

    @register_model(TINY_MODEL, family="test")
    def tiny(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    try:
        yield
    finally:
        MODELS.pop(TINY_MODEL, None)


def test_compile_model_specialises_every_batch_size():
    """A second batch size gets its own static graph, not a dynamic one (a dynamic graph would also serve
    a third size without compiling): full batches keep their fully specialised kernels."""
    from fasttrain.runtime import compile_model, compiled_graphs

    torch._dynamo.reset()
    net = compile_model(nn.Linear(4, 2))
    start = compiled_graphs()
    for n in (64, 44, 64):
        net(torch.ones(n, 4))
    assert compiled_graphs() - start == 2  # one per size; the full size again reuses its graph
    net(torch.ones(50, 4))
    assert compiled_graphs() - start == 3  # specialised, so a new size compiles anew


@pytest.mark.slow
def test_compiled_training_never_recompiles_inside_the_timed_epochs(cifar_tensor_slice, tmp_path):
    """Full batches (64) and the short last one (300 % 64 = 44) each get a static graph compiled before
    the clock (the full one first): dynamo's own counters see no graph compiled during the two epochs."""
    from fasttrain.train import train

    with tiny_model_registered():
        cfg = resolve(TINY_MODEL, None, dict(data=str(cifar_tensor_slice), out=str(tmp_path / "run"),
                                             device="cpu", epochs=2, batch_size=64, tta="none", amp="off",
                                             compile=True))
        summary = train(cfg, quiet=True)
    assert summary["compile"] is True and summary["compile_s"] > 0
    assert summary["steps"] == 2 * 5
    assert summary["recompiles"] == 0


# ============================================================================ batched Muon
def test_newton_schulz_runs_in_the_fastest_precision_of_the_device():
    from fasttrain.runtime import resolve_amp

    cpu = torch.device("cpu")
    assert newton_schulz_dtype(cpu) == (torch.bfloat16 if resolve_amp("auto", cpu) else torch.float32)
    g = torch.randn(8, 12)
    assert zeropower_newton_schulz(g, 3, dtype=torch.float32).dtype == torch.float32
    # the same orthogonalisation, to bf16's precision
    torch.testing.assert_close(zeropower_newton_schulz(g, 3, dtype=torch.float32),
                               zeropower_newton_schulz(g, 3).float(), rtol=0.05, atol=0.05)


def test_batched_muon_matches_torch_muon_on_same_shape_matrices():
    """Same-shape weights share one batched Newton-Schulz; each must still get exactly torch.optim.Muon's
    update (the batch is a stack of independent matrices, not one big one)."""
    gen = torch.Generator().manual_seed(5)
    w0 = [torch.randn(16, 24, generator=gen) for _ in range(3)] + [torch.randn(40, 8, generator=gen)]
    ours = [nn.Parameter(w.clone()) for w in w0]
    ref = [nn.Parameter(w.clone()) for w in w0]
    opt = MuonWithAux([dict(params=ours, lr=0.02, momentum=0.95, weight_decay=0.1, use_muon=True)], nesterov=True,
                      ns_dtype=torch.bfloat16)  # as torch.optim.Muon
    opt_ref = torch.optim.Muon(ref, lr=0.02, momentum=0.95, weight_decay=0.1, nesterov=True,
                               adjust_lr_fn="original")
    for _ in range(3):
        for p, q in zip(ours, ref):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        opt_ref.step()
    for p, q in zip(ours, ref):
        assert torch.allclose(p, q, atol=1e-6), (p - q).abs().max()
    batch = torch.stack([w.reshape(16, -1) for w in w0[:3]])
    each = torch.stack([zeropower_newton_schulz(m, 3) for m in batch])
    assert torch.equal(zeropower_newton_schulz(batch, 3), each)


def test_compiled_newton_schulz_matches_eager_and_is_warmed_up_per_shape():
    convs = [nn.Conv2d(4, 8, 3, bias=False) for _ in range(2)] + [nn.Conv2d(8, 8, 1, bias=False)]
    params = [c.weight for c in convs]
    opt = MuonWithAux([dict(params=params, lr=0.1, momentum=0.6, weight_decay=0.0, use_muon=True, ns_steps=3,
                            weight_norm=True)], nesterov=True)
    from fasttrain.runtime import compiled_graphs

    before = compiled_graphs()
    assert opt.compile_newton_schulz() > 0
    assert compiled_graphs() - before == 2  # one graph per (shape, count): (2, 8, 36) and (1, 8, 8)
    g = torch.randn(2, 8, 36)
    with torch.no_grad():
        dtype = opt.ns_dtype or newton_schulz_dtype(g.device)
        torch.testing.assert_close(opt._newton_schulz(g, 3, dtype=dtype), zeropower_newton_schulz(g, 3, dtype=dtype),
                                   rtol=0.02, atol=0.02)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert compiled_graphs() - before == 2  # the real step reuses the warmed-up graphs
