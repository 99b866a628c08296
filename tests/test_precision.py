"""bf16 autocast and channels_last give the fp32 generator's output, for every generator.

On the CPU, at tiny sizes. Each network's batch-norm statistics are first set from one batch,
so that its eval-mode activations are of unit scale (an untrained network in eval mode would
otherwise give a near-constant output and make the comparison empty).
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch
from torch import nn

from mri2mri.config import ModelConfig
from mri2mri.errors import ConfigError
from mri2mri.models import GENERATORS, build_generator, minimum_image_size
from mri2mri.runtime import Runtime

# Output range [-1, 1]. bf16 keeps 8 bits of mantissa: the mean deviation stays near 2e-3 to
# 6e-3, single pixels of the deepest network (resnet9, 9 residual blocks) reach about 4e-2.
MEAN_TOLERANCE = 1e-2
MAX_TOLERANCE = 6e-2


def _calibrated_generator(name: str) -> tuple[nn.Module, torch.Tensor]:
    config = ModelConfig(generator=name, base_channels=8, dropout=0.0)
    size = minimum_image_size(config)
    torch.manual_seed(0)
    G = build_generator(config)
    rows = torch.linspace(-1, 1, size)
    pattern = torch.sin(6 * rows)[:, None] * torch.cos(4 * rows)[None, :]  # (H, W)
    noise = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(1))
    source = (0.8 * pattern + 0.1 * noise).clamp(-1, 1)  # (2, 1, H, W)
    for module in G.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        G.train()(source)
    return G.eval(), source


def _output(G: nn.Module, source: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    G = runtime.prepare_module(G)
    with torch.inference_mode(), runtime.autocast():
        out = G(runtime.to_device(source))
    return out.float().contiguous()


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_bf16_and_channels_last_match_fp32(name):
    G, source = _calibrated_generator(name)
    cpu = torch.device("cpu")
    reference = _output(G, source, Runtime(device=cpu))
    assert reference.std() > 0.05, "the comparison needs a non-constant output"
    # channels_last alone changes only the order of the sums.
    channels_last = _output(G, source, Runtime(device=cpu, channels_last=True))
    assert (channels_last - reference).abs().max() < 1e-4
    for channels_last in (False, True):
        G = G.to(memory_format=torch.contiguous_format)
        out = _output(G, source, Runtime(device=cpu, precision="bf16", channels_last=channels_last))
        assert out.shape == reference.shape
        difference = (out - reference).abs()
        label = f"bf16, channels_last={channels_last}"
        assert difference.mean() < MEAN_TOLERANCE, f"{label}: mean deviation {difference.mean():.3g}"
        assert difference.max() < MAX_TOLERANCE, f"{label}: largest deviation {difference.max():.3g}"


def test_channels_last_reaches_the_network():
    G, source = _calibrated_generator("basic")
    runtime = Runtime(device=torch.device("cpu"), channels_last=True)
    prepared = runtime.prepare_module(G)
    weight = next(p for p in prepared.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert runtime.to_device(source).is_contiguous(memory_format=torch.channels_last)


def test_resumed_optimizer_state_follows_the_parameters_memory_format():
    from mri2mri.training.state import _match_parameter_layouts

    torch.manual_seed(0)
    weight, grad = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)

    def two_steps(resumed_format: torch.memory_format) -> torch.Tensor:
        param = nn.Parameter(weight.clone().contiguous(memory_format=torch.channels_last))
        optimizer = torch.optim.Adam([param], lr=0.1, fused=True)
        for step in range(2):
            param.grad = grad.clone().contiguous(memory_format=torch.channels_last)
            optimizer.step()
            if step == 0:  # a checkpoint written with another layout, then resumed
                saved = optimizer.state_dict()
                for key in ("exp_avg", "exp_avg_sq"):
                    saved["state"][0][key] = saved["state"][0][key].contiguous(memory_format=resumed_format)
                optimizer.load_state_dict(saved)
                _match_parameter_layouts(optimizer)
        return param.detach()

    assert torch.allclose(two_steps(torch.contiguous_format), two_steps(torch.channels_last), atol=1e-6)


def test_a_compile_failure_at_the_first_call_falls_back_to_eager(monkeypatch):
    from mri2mri import runtime as runtime_module

    def broken_compile(module):
        def run(*args, **kwargs):
            raise RuntimeError("backend compiler failed: no C++ compiler")

        return run

    monkeypatch.setattr(runtime_module.torch, "compile", broken_compile)
    G = build_generator(ModelConfig(generator="basic", base_channels=8))
    wrapped = runtime_module.maybe_compile(G, enabled=True)
    source = torch.zeros(1, 1, 16, 16)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler.*running eagerly"):
        out = wrapped(source)
    assert torch.equal(out, G(source))
    assert torch.equal(wrapped(source), out)  # eager from then on, no second warning
    assert set(wrapped.state_dict()) == {f"module.{key}" for key in G.state_dict()}
    assert runtime_module.maybe_compile(G, enabled=False) is G


def test_a_bf16_channels_last_training_step_follows_the_fp32_step():
    """What a GPU runs by default (bf16 autocast + channels_last), here on the CPU: one GAN step
    keeps fp32 weights and gives the fp32 step's losses to bf16 precision."""
    from conftest import tiny_config

    from mri2mri.training import build_networks, gan_step

    config = tiny_config()
    source = torch.linspace(-1, 1, 4 * 32 * 32).reshape(4, 1, 32, 32).sin()
    target = -source
    results = {}
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        runtime = Runtime(device=torch.device("cpu"), precision=precision, channels_last=channels_last)
        torch.manual_seed(0)
        nets = build_networks(config, runtime)
        results[precision] = gan_step(nets, runtime.to_device(source), runtime.to_device(target), config, runtime)
        assert all(p.dtype == torch.float32 for p in nets.G.parameters())
    fp32, bf16 = results["fp32"], results["bf16"]
    assert not bf16.skipped
    assert bf16.loss_L1 == pytest.approx(fp32.loss_L1, rel=2e-2)
    assert bf16.loss_D == pytest.approx(fp32.loss_D, rel=5e-2)


# --------------------------------------------------------------------------------------------
# --precision auto
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("native", "expected"), [(False, "fp32"), (True, "bf16")])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native, expected):
    import warnings

    from mri2mri import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "cpu_has_fast_bf16", lambda: native)
    precision, why = runtime_module.resolve_precision("auto", torch.device("cpu"))
    assert (precision, why) == (expected, "this CPU has native bf16" if native else "this CPU emulates bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never picks emulated bf16, so never warns about it
        runtime = runtime_module.setup_runtime("cpu", "auto")
    assert runtime.precision == expected
    assert runtime.describe_precision() == f"precision auto -> {expected} ({why})"
    assert (runtime.amp_dtype is torch.bfloat16) == native


def _x86_linux_cpu_flags() -> set[str] | None:
    """The flags the Linux kernel reports for this x86 CPU, or None elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine().lower() not in ("x86_64", "amd64") or not cpuinfo.is_file():
        return None
    line = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), None)
    return set(line.split(":", 1)[1].split()) if line else None


def test_native_bf16_means_the_instructions_not_onednn_s_emulation():
    # oneDNN's own check accepts any AVX-512 core, where it emulates bf16: on a 2-core Xeon
    # without AVX512-BF16, bf16 training ran at 0.36x fp32 (2.75 against 7.54 images/s, 128 px).
    from mri2mri.runtime import cpu_has_fast_bf16

    flags = _x86_linux_cpu_flags()
    if flags is None:
        pytest.skip("reads the CPU flags of Linux on x86")
    assert cpu_has_fast_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags), sorted(
        flag for flag in flags if flag.startswith(("avx512", "amx"))
    )


def test_an_explicit_precision_is_kept_and_described_as_itself(monkeypatch):
    from mri2mri import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "cpu_has_fast_bf16", lambda: False)
    assert runtime_module.resolve_precision("fp32", torch.device("cpu")) == ("fp32", "")
    with pytest.warns(UserWarning, match="emulated"):
        runtime = runtime_module.setup_runtime("cpu", "bf16")
    assert runtime.precision == "bf16" and runtime.describe_precision() == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        runtime_module.resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown --precision 'fp64'.*auto"):
        runtime_module.resolve_precision("fp64", torch.device("cpu"))


@pytest.mark.parametrize(("native", "precision", "epochs"),
                         [(True, "auto", 30), (False, "auto", 15), (True, "fp32", 15), (True, "bf16", 30)])
def test_the_demo_trains_half_the_epochs_where_a_cpu_trains_in_fp32(monkeypatch, native, precision, epochs):
    # fp32 trains about half as fast as native bf16 on 2 cores: 30 epochs would take the demo
    # past ten minutes there (13 min of training alone).
    from mri2mri import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "cpu_has_fast_bf16", lambda: native)
    assert runtime_module.demo_cpu_epochs(precision) == epochs


def test_a_runtime_holds_a_resolved_precision():
    with pytest.raises(ValueError, match="resolved precision"):
        Runtime(device=torch.device("cpu"), precision="auto")


def test_auto_is_the_default_of_train_and_fp32_of_predict():
    """predict runs in fp32 by default: the same volume on every machine and in the ONNX export."""
    from mri2mri.cli import build_parser
    from mri2mri.config import TrainConfig

    assert TrainConfig().precision == "auto"
    parser = build_parser()
    assert parser.parse_args(["train", "data"]).precision == "auto"
    assert parser.parse_args(["predict", "model.pth", "in.nii", "out.nii"]).precision == "fp32"
