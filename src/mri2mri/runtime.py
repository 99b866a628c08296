"""Device, precision and distribution, decided in one place.

Everything that depends on where the code runs is resolved here once and passed around as a
small ``Runtime`` record (nanoGPT's ``train.py`` and EDM's ``torch_utils/distributed.py`` do the
same). The CPU path runs the same code as the GPU path: autocast and ``GradScaler`` are simply
disabled where they do not apply.

Distributed training is PyTorch's own: launched by ``torchrun``, which sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; NCCL on GPUs, gloo on the CPU.

``--precision auto`` (the default) is resolved here: bf16 where it is native, fp32 elsewhere.
How the CPU's threads wait is decided earlier, before torch loads, in :mod:`mri2mri.threads`
(this module imports torch, and the OpenMP runtime reads its settings when torch loads it).
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from mri2mri.errors import ConfigError, first_line

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed in this process."""

    device: torch.device
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16, never auto
    channels_last: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    precision_reason: str = ""  # why ``--precision auto`` chose ``precision``; empty otherwise

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"Runtime needs a resolved precision (fp32, bf16, fp16), not {self.precision!r}")

    def describe_precision(self) -> str:
        """``bf16``, or ``precision auto -> fp32 (this CPU emulates bf16)`` when auto chose it."""
        if self.precision_reason:
            return f"precision auto -> {self.precision} ({self.precision_reason})"
        return self.precision

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes history, figures and checkpoints."""
        return self.rank == 0

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context; a no-op in fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling is needed for fp16 only (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        non_blocking = self.device.type == "cuda"
        if self.channels_last and tensor.dim() == 4:
            return tensor.to(self.device, non_blocking=non_blocking, memory_format=torch.channels_last)
        return tensor.to(self.device, non_blocking=non_blocking)


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` into a device, failing clearly when it is absent."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but Apple's MPS backend is not available")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` if it is a valid choice on ``device`` (``auto`` included), else ConfigError."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU; use fp32 (or bf16 on a CPU with native bf16)")
    return precision


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware: AVX512-BF16 or AMX on x86, bf16 on Arm.

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is not enough on x86: it
    accepts every AVX-512 core, where bf16 is emulated, and training there ran at 0.36x fp32
    (a 2-core Xeon without AVX512-BF16, 128 px). On Arm it is the bf16 extension itself.
    """
    try:
        if platform.machine().lower() in ("x86_64", "amd64", "x86", "i386", "i686"):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private probes: absent from some builds
        return False


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """``(fp32|bf16|fp16, why)``: ``auto`` becomes bf16 where bf16 is native (a GPU that
    supports it, a CPU with AVX512-BF16/AMX or Arm bf16), fp32 elsewhere, and says why; any
    other choice is returned as it is, with an empty reason."""
    precision = check_precision(precision, device)
    if precision != "auto":
        return precision, ""
    if device.type == "cuda":
        if gpu_has_native_bf16():
            return "bf16", "this GPU has native bf16"
        return "fp32", "this GPU has no native bf16"
    if device.type == "cpu":
        if cpu_has_fast_bf16():
            return "bf16", "this CPU has native bf16"
        return "fp32", "this CPU emulates bf16"
    return "fp32", f"no bf16 autocast on {device.type}"


def demo_cpu_epochs(precision: str) -> int:
    """Epochs of ``mri2mri demo`` on a CPU, sized to finish in under ten minutes on 2 cores: 30
    where training runs in bf16 (about 6 min of training), 15 where it runs in fp32, which is
    about half as fast (30 epochs took 13 min there)."""
    return 30 if resolve_precision(precision, torch.device("cpu"))[0] == "bf16" else 15


def gpu_has_native_bf16() -> bool:
    """Whether the current CUDA GPU computes bf16 in hardware (Ampere and later, recent ROCm)."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no emulation to exclude
        return bool(torch.cuda.is_bf16_supported())


def setup_runtime(
    device: str = "auto", precision: str = "auto", channels_last: bool = False
) -> Runtime:
    """Resolve device and precision, and join the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if world_size > 1 and resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if world_size > 1 and resolved.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Processes on one machine share its cores: more threads than cores make them all crawl.
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, _available_cores() // local_world_size))
    precision, precision_reason = resolve_precision(precision, resolved)
    if precision == "bf16" and resolved.type == "cpu" and not cpu_has_fast_bf16():
        # Without AVX512-BF16/AMX (or Arm bf16) oneDNN emulates bf16: slower than fp32, often many times.
        warnings.warn("bf16 on this CPU is emulated and usually much slower than fp32", stacklevel=2)
    if resolved.type == "cuda":
        # TF32 matmuls: same convergence for conv nets, several times faster on Ampere+.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return Runtime(
        device=resolved,
        precision=precision,
        channels_last=channels_last,
        rank=rank,
        local_rank=local_rank,
        world_size=world_size,
        precision_reason=precision_reason,
    )


def _available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def teardown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def maybe_compile(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile`` when asked, falling back to eager with a message when unsupported.

    Compilation happens at the first call, not here, so the fallback is decided there too:
    see :class:`CompiledOrEager`.
    """
    if not enabled:
        return module
    try:
        return CompiledOrEager(module)
    except Exception as error:  # compile support varies by platform and Python version
        warnings.warn(f"torch.compile is not available here ({error}); running eagerly", stacklevel=2)
        return module


class CompiledOrEager(torch.nn.Module):
    """Runs ``torch.compile(module)``; if compiling fails at the first call (no C++ compiler,
    an unsupported GPU or platform), says so once and runs ``module`` eagerly from then on.

    Only ``module`` is a registered child, so parameters, ``train()`` and ``state_dict()`` are
    the module's own.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.__dict__["compiled"] = torch.compile(module)  # not a child: no duplicate parameters
        self.checked = False

    def forward(self, *args, **kwargs):
        if self.compiled is None:
            return self.module(*args, **kwargs)
        if self.checked:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as error:  # a genuine error in the module raises again below
            warnings.warn(f"torch.compile failed ({first_line(error)}); running eagerly", stacklevel=2)
            self.__dict__["compiled"] = None
            return self.module(*args, **kwargs)
        self.checked = True
        return out


def sync_batchnorm(module: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """Batch norm over the global batch when distributed: ``nn.SyncBatchNorm`` on GPUs, where
    its fused kernels run, and ``GlobalBatchNorm2d`` elsewhere (SyncBatchNorm is GPU-only)."""
    if not runtime.distributed:
        return module
    if runtime.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    from mri2mri.sync_batchnorm import convert_global_batchnorm

    return convert_global_batchnorm(module)


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()
