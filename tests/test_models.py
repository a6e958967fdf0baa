"""The model zoo: every registered model trains a step on CPU, the reference table's parameter counts and
FLOPs, activation/drop_path/image_size options, the zoo table and CLI, and the CIFAR-10 ResNet table recipes."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch import nn

from fasttrain.models import MODELS, create_model, list_models, model_options, register_model
from fasttrain.models.layers import DropPath, drop_path_rates
from fasttrain.zoo_cmd import count_flops, count_params, describe, measure, select, to_markdown, zoo_rows

ALL = list_models()
RESIDUAL = [n for n in ALL if "drop_path" in (model_options(n) or [])]
# A cheap member of each core or reference-table family runs in the quick suite; the rest (up to 9 GMACs, or very deep) are
# marked slow, which CI still runs.
FAST = {"resnet9", "airbench", "resnet18", "preact_resnet18", "resnet18v2", "resnet34v2", "resnet35b", "resnet50b",
        "resnext50_32", "senet50", "densenet100_k12", "mobilenetv2", "wrn16_8"}
# The zoo's own families (plus the core's); the strict activation test applies to these.
ZOO_MODULES = {f"fasttrain.models.{m}" for m in (
    "resnet9 airbench resnet resnetv2 resnext senet densenet mobilenetv2 wrn pyramidnet resnest efficientnet "
    "inception xception ibn tresnet").split()}


def _by_cost(names):
    return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, 10, **kw)


# ----------------------------------------------------------------------------------------- registry
def test_registry_rejects_duplicates_and_drops_unset_kwargs():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("resnet18")(lambda num_classes=10: nn.Identity())
    m = create_model("resnet18v2", 10, width=None, activation=None, drop_path=None)  # None = model default
    assert isinstance(m, nn.Module)
    with pytest.raises(TypeError, match="does not take"):
        create_model("densenet100_k12", 10, drop_path=0.1)


def test_zoo_has_every_model_the_seeds_name():
    required = """resnet9 resnet9_c100 airbench resnet18 preact_resnet18 resnet18v2 resnet34v2 resnet35b resnet50b
        resnet101b resnet152b resnet170b wide_resnet18 resnext50_32 resnext101_32 resnext152_32 senet50 senet101
        senet152 densenet100_k12 densenet100_k16 densenet160_k12 densenet250_k12 densenet250_k24 densenet190_k40
        mobilenetv2 wrn28_10 wrn16_8 pyramidnet110_a48 resnest50 efficientnet_b0 inception_v3 xception
        resnet50_ibn_a tresnet_m""".split()
    assert not set(required) - set(ALL)
    for name in ALL:
        assert "activation" in model_options(name), f"{name} does not take activation="


# ----------------------------------------------------------------------------- every model, one step
@pytest.mark.parametrize("name", _by_cost(ALL))
def test_forward_backward_cpu_channels_last(name):
    torch.manual_seed(0)
    model = create_model(name, 10).to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out.float(), torch.tensor([1, 7])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "missing or non-finite gradient"
    assert any(g.abs().sum() > 0 for g in grads)


# One model per family (the cheapest); families registered elsewhere contribute their first model.
REPRESENTATIVE = {"resnet9": "resnet9", "airbench": "airbench", "resnet": "resnet18", "resnetv2": "resnet18v2",
                  "resnext": "resnext50_32", "senet": "senet50", "densenet": "densenet100_k12",
                  "mobilenetv2": "mobilenetv2", "wrn": "wrn16_8", "pyramidnet": "pyramidnet110_a48",
                  "resnest": "resnest50", "efficientnet": "efficientnet_b0", "inception": "inception_v3",
                  "xception": "xception", "ibn": "resnet50_ibn_a", "tresnet": "tresnet_m"}
for _name in ALL:
    REPRESENTATIVE.setdefault(MODELS[_name].family, _name)
SMALLEST = sorted(REPRESENTATIVE.values())


def _one_block_per_stage() -> dict:
    """The deep representatives' own classes with one block (unit, dense layer) per stage: the same code,
    hence the same graph pieces, traced in a second instead of 10-17 s each on 2 cores."""
    from fasttrain.models.densenet import DenseNetBC
    from fasttrain.models.pyramidnet import PyramidNet
    from fasttrain.models.resnest import ResNeSt
    from fasttrain.models.senet import _senet
    from fasttrain.models.tresnet import TResNet

    return {"pyramidnet110_a48": lambda: PyramidNet(depth=8, alpha=48),
            "tresnet_m": lambda: TResNet([1, 1, 1, 1], width=0.25),
            "densenet100_k12": lambda: DenseNetBC(10, 12),
            "resnest50": lambda: ResNeSt([1, 1, 1, 1], width=0.25),
            "senet50": lambda: _senet([1, 1, 1, 1], 10, 0.25, "relu", 0.0)}


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALLEST)
def test_forward_64px(name):
    """Tiny ImageNet size; depth does not change the code path within a family, so one model each."""
    model = create_model(name, 200).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 200) and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name,kw", [("resnet18", {"stem": "imagenet"}), ("resnet50b", {}), ("mobilenetv2", {}),
                                     ("efficientnet_b0", {}), ("preact_resnet18", {"stem": "imagenet"})])
def test_forward_imagenet_size(name, kw):
    model = create_model(name, 1000, **kw).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- reference parameters, FLOPs
# Keras "total params" (BatchNorm running mean/var counted), from the reference ResNet table.
REFERENCE_TOTAL = {"resnet34v2": 1_327_226, "resnet35b": 873_722, "resnet101b": 2_530_426, "resnet152b": 3_528_314}
# Published trainable counts of the standard CIFAR nets (10 classes).
PUBLISHED = {"resnet50b": 1_309_210,  # the reference table's ResNet50b row lists the trainable count
             "resnet18": 11_173_962, "wrn28_10": 36_479_194, "wrn16_8": 10_961_370, "densenet100_k12": 769_162}


@pytest.mark.parametrize("name,total", REFERENCE_TOTAL.items())
def test_reference_param_counts_with_bn_stats(name, total):
    assert count_params(_meta(name))[1] == total


@pytest.mark.parametrize("name,trainable", PUBLISHED.items())
def test_published_trainable_counts(name, trainable):
    assert count_params(_meta(name))[0] == trainable


def test_bn_stats_are_counted_twice_per_channel():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    assert count_params(m) == (3 * 4 * 9 + 8, 3 * 4 * 9 + 16)


# The reference table's "FLOPs/2" column (multiply-adds at 32x32). ResNet34 is exact; bottleneck nets differ by the
# fixed blur filters' own 0.13M (the reference table did not count them).
REFERENCE_MACS = {"resnet34v2": 72.40e6, "resnet35b": 51.83e6, "resnet50b": 74.11e6, "resnet101b": 149.87e6,
             "resnet152b": 225.63e6, "resnet170b": 252.37e6}


@pytest.mark.parametrize("name,macs", REFERENCE_MACS.items())
def test_reference_flops(name, macs):
    ours = count_flops(_meta(name)) / 2
    assert abs(ours - macs) <= 0.14e6, f"{name}: {ours / 1e6:.2f}M MACs vs the reference table's {macs / 1e6:.2f}M"


def test_blur_after_conv_is_the_costlier_guide_variant():
    from fasttrain.models.resnetv2 import PreActBottleneck, ResNetV2

    with torch.device("meta"):
        after = ResNetV2(PreActBottleneck, [3, 4, 6, 3], blur="after")
    assert count_params(after) == count_params(_meta("resnet50b"))
    assert count_flops(after) > count_flops(_meta("resnet50b")) * 1.25


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("name", ALL)
def test_activation_option_replaces_every_activation(name):
    model = _meta(name, activation="mish")
    kinds = {type(m) for m in model.modules()}
    assert nn.Mish in kinds
    if MODELS[name].fn.__module__ in ZOO_MODULES:
        assert not kinds & {nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU}, f"{name} keeps {kinds}"


@pytest.mark.parametrize("name", RESIDUAL)
def test_drop_path_rates_increase_linearly_to_the_given_rate(name):
    ps = [m.p for m in _meta(name, drop_path=0.3).modules() if isinstance(m, DropPath)]
    assert len(ps) >= 4
    assert all(0 < a < b for a, b in zip(ps, ps[1:])) and ps[-1] <= 0.3 + 1e-9
    if name in ("mobilenetv2", "efficientnet_b0"):
        # Rates are linear over all blocks; blocks that change shape have no residual, hence no DropPath.
        assert ps[-1] > 0.25
    else:
        n = len(ps)
        assert ps == pytest.approx([0.3 * (i + 1) / n for i in range(n)])
    assert all(m.p == 0 for m in _meta(name).modules() if isinstance(m, DropPath))


def test_drop_path_rates_rule_and_bounds():
    assert drop_path_rates(4, 0.2) == pytest.approx([0.05, 0.1, 0.15, 0.2])
    with pytest.raises(ValueError, match="drop_path"):
        drop_path_rates(3, 1.0)


def test_drop_path_is_off_at_eval_and_random_in_training():
    torch.manual_seed(0)
    plain = create_model("resnet18v2", 10, width=0.5)
    sd = create_model("resnet18v2", 10, width=0.5, drop_path=0.9)
    sd.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 32, 32)
    plain.eval(), sd.eval()
    with torch.no_grad():
        torch.testing.assert_close(sd(x), plain(x))
        sd.train()
        a, b = sd(x), sd(x)
    assert not torch.allclose(a, b)


def test_drop_path_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(20000, 1, 2, 2)
    y = DropPath(0.3).train()(x)
    kept = y[:, 0, 0, 0]
    assert ((kept == 0) | torch.isclose(kept, torch.tensor(1 / 0.7))).all()
    assert (y == y[:, :1, :1, :1]).all()  # one decision per sample
    assert kept.mean().item() == pytest.approx(1.0, abs=0.03)
    assert torch.equal(DropPath(0.3).eval()(x), x)


def test_image_size_upscales_inside_the_model():
    with torch.device("meta"):
        up = create_model("mobilenetv2", 10, image_size=96)
        cifar = create_model("mobilenetv2", 10)
    # The 96 px mode costs the same on a 32 px input as on a 96 px one (it resizes first) and uses
    # ImageNet strides: 96/32 = 3x3 final map, so fewer FLOPs than CIFAR mode at 96 px.
    assert count_flops(up, 32) == count_flops(up, 96)
    assert count_flops(up, 32) < count_flops(cifar, 96)
    out = create_model("mobilenetv2", 10, image_size=96).eval()(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10)


def test_merge_model_options_checks_the_model():
    from fasttrain.config import RunConfig
    from fasttrain.models import ModelError
    from fasttrain.models.options import merge_model_options

    cfg = RunConfig(model="resnet50b")
    merge_model_options(cfg, width=None, activation="mish", drop_path=0.2, image_size=None)
    assert cfg.model_kwargs == {"activation": "mish", "drop_path": 0.2}
    with pytest.raises(ModelError, match="--drop-path"):
        merge_model_options(RunConfig(model="densenet100_k12"), drop_path=0.1)
    with pytest.raises(ModelError, match="--activation"):
        merge_model_options(RunConfig(model="resnet50b"), activation="tanh")
    with pytest.raises(ModelError, match="--attention"):
        merge_model_options(RunConfig(model="resnet18_attn"), attention="every")
    with pytest.raises(ModelError, match="model_kwargs"):
        merge_model_options(RunConfig(model="inception_v3", model_kwargs={"drop_path": 0.1}))


def test_models_import_only_torch_and_each_other():
    """Models are a leaf: their errors are their own (ModelError, a ValueError), outside the package they
    import only torch and the project's list of choices (the one did-you-mean and the option tables), the
    registry imports no family, and the package imports every family (as timm does)."""
    import ast
    import sys
    from pathlib import Path

    import fasttrain.models as models

    for path in Path(models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level == 2 and mod == "choices":  # fasttrain.choices: imports nothing itself
                    continue
                top = mod.split(".")[0]
                optional = {"timm", "huggingface_hub"} if path.name == "external.py" else set()  # timm models
                assert node.level == 1 or top in {"torch", *optional} or top in sys.stdlib_module_names, \
                    (path.name, mod)
                assert node.level <= 1, f"{path.name} imports from outside models: {'.' * node.level}{mod}"
                if path.name == "registry.py":
                    assert node.level == 0, f"the registry imports {mod}"
    with pytest.raises(models.ModelError, match="did you mean resnet9"):
        models.get_entry("resnet_9")
    with pytest.raises(KeyError):  # still a KeyError for dict-style callers
        models.get_entry("resnet_9")


# ---------------------------------------------------------------------------------------- compile
@pytest.mark.slow
@pytest.mark.parametrize("name", SMALLEST)
def test_compile_one_model_per_family(name):
    """torch.compile with the whole graph captured (fullgraph: no graph breaks) and AOT autograd (joint
    forward + backward graph) matches eager in a training step. backend='aot_eager' keeps this to seconds
    per family on 2 CPU cores; inductor's code generation is covered by test_compile_inductor."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    # Narrow and 16 px where possible: the graph is the same, the arithmetic 4-64x less (CI has 2 cores).
    narrow = "width" in model_options(name) and MODELS[name].family != "resnext"  # 32 groups need width >= 1
    kw = {"width": 0.25} if narrow else {}
    compact = _one_block_per_stage().get(name, lambda: create_model(name, 10, **kw))
    eager, twin = (compact().to(memory_format=torch.channels_last).train() for _ in range(2))
    twin.load_state_dict(eager.state_dict())
    for m in [*eager.modules(), *twin.modules()]:
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # deterministic, so eager and compiled can be compared
    x = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
    ref = eager(x)
    got = torch.compile(twin, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    ref.square().mean().backward()
    got.square().mean().backward()
    for (n, p), q in zip(eager.named_parameters(), twin.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.slow
def test_compile_inductor():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_model("resnet18v2", 10, width=0.5).to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------- zoo table
@pytest.mark.slow
def test_zoo_rows_cover_every_model_in_table_order():
    rows = zoo_rows()
    assert sorted(r.name for r in rows) == ALL
    assert [r.name for r in rows][:3] == ["resnet9", "resnet9_c100", "airbench"]
    for r in rows:
        assert r.params > 0 and r.params_with_bn_stats >= r.params and r.flops > 0
    md = to_markdown(rows)
    assert md.count("\n") == len(rows) + 2 and "| `resnet50b` | resnetv2 | 1,309,210 | 1,320,570 |" in md


def test_select_by_family_and_name():
    assert select("resnetv2,resnet18") == ["resnet18", "resnet18v2", "resnet34v2", "resnet35b", "resnet50b",
                                          "resnet101b", "resnet152b", "resnet170b", "wide_resnet18"]
    with pytest.raises(KeyError, match="neither a model nor a family"):
        select("resnet1000")


def test_measure_on_cpu_fills_the_speed_columns():
    row = measure(describe("resnet18v2"), torch.device("cpu"), batch_size=4, steps=1, warmup=1, compile=False)
    assert row.error is None
    assert row.train_imgs_per_s > 0 and row.infer_imgs_per_s > 0 and row.compiled is False
    assert row.speedup_vs_fp32 == pytest.approx(row.train_imgs_per_s / row.eager_fp32_train_imgs_per_s)
    assert "speed-up" in to_markdown([row])


def test_zoo_cli_json_and_errors(tmp_path):
    from typer.testing import CliRunner

    from fasttrain.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["zoo", "--models", "resnetv2", "--json", "--out", str(tmp_path / "zoo.json"),
                              "--markdown", str(tmp_path / "zoo.md")])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)["rows"]}
    assert rows["resnet34v2"]["params_with_bn_stats"] == 1_327_226
    assert rows["resnet34v2"]["macs"] == 72_402_176
    assert json.loads((tmp_path / "zoo.json").read_text())["rows"][0]["name"] == "resnet18v2"
    assert "`resnet152b`" in (tmp_path / "zoo.md").read_text()
    bad = runner.invoke(app, ["zoo", "--models", "nope"])
    assert bad.exit_code == 2 and "neither a model nor a family" in bad.output
    if not torch.cuda.is_available():
        bad = runner.invoke(app, ["zoo", "--measure", "--device", "cuda", "--models", "resnet18v2"])
        assert bad.exit_code == 2 and "no CUDA device" in bad.output


def test_run_cli_rejects_an_option_the_model_lacks():
    from typer.testing import CliRunner

    from fasttrain.cli import app

    res = CliRunner().invoke(app, ["run", "densenet100_k12", "--drop-path", "0.1", "--recipe", "myrtle24"])
    assert res.exit_code == 2 and "--drop-path" in res.output


# ------------------------------------------------------------------------------------------ recipes
def test_resnet_table_recipes_are_valid():
    from fasttrain.config import RunConfig
    from fasttrain.recipes import RECIPE_ALIASES, RECIPES, RESNET_TABLE_RECIPES
    from fasttrain.models.options import merge_model_options

    assert {"cifar10-sd-htd-cutmix", "cifar10-96px-htd-cutmix", "cifar10-htd-cutmix"} <= set(RESNET_TABLE_RECIPES)
    for name, recipe in RESNET_TABLE_RECIPES.items():
        assert recipe["schedule"] in ("htd", "cosine", "multistep"), name
        cfg = RunConfig.from_dict(recipe).validate()
        merge_model_options(cfg)  # the recipe's model takes its model_kwargs
        _meta(cfg.model, **cfg.model_kwargs)
        assert name in RECIPES
    headline = RESNET_TABLE_RECIPES["cifar10-sd-htd-cutmix"]
    assert headline["model"] == "resnet50b" and headline["schedule"] == "htd"
    assert headline["model_kwargs"]["drop_path"] > 0 and headline["cutmix"] > 0
    assert RESNET_TABLE_RECIPES["cifar10-96px-htd-cutmix"]["model_kwargs"] == {"image_size": 96}
    assert RECIPE_ALIASES["seed-sd-htd-cutmix"] == "cifar10-sd-htd-cutmix"  # the earlier name still works


def test_every_factory_documents_itself():
    for name in ALL:
        if MODELS[name].fn.__module__ in ZOO_MODULES:
            assert inspect.getdoc(MODELS[name].fn), f"{name} has no docstring"
