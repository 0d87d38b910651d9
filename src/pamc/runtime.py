"""Where and how tensors are computed: device, mixed precision, memory format, processes.

Training, evaluation, prediction and explanation all run through a `Runtime`, so none of them
needs the training engine to pick a device or to predict in batches.
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, replace
from typing import Optional

import torch

from .data.loading import image_batches
from .data.transforms import flip_where, normalize_uint8
from .distributed import Dist
from .errors import PamcError
from .models import eval_mode

#: accepted values of the precision and memory-format settings
AMP_MODES = {"auto": None, "bf16": True, "off": False}
CHANNELS_LAST_MODES = {"auto": None, "on": True, "off": False}


def check_mode(name: str, value: str, modes: dict) -> None:
    if value not in modes:
        raise PamcError(f"{name} must be {', '.join(modes)} (got {value!r})")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


@functools.lru_cache(maxsize=None)
def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
    """The CPU feature that runs bf16 natively (x86 ``amx_bf16`` / ``avx512_bf16``, Arm ``bf16``), or
    None.  Where it is missing, bf16 autocast is emulated and slower than fp32, so auto keeps fp32."""
    if platform.system() == "Darwin":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        return "FEAT_BF16" if out == "1" else None
    try:
        with open(cpuinfo) as f:
            flags = {word for line in f if line.startswith(("flags", "Features")) for word in line.split()}
    except OSError:
        return None
    return next((name for name in ("amx_bf16", "avx512_bf16", "bf16") if name in flags), None)


#: the share of a model's multiply-adds in depthwise convolutions from which `auto` keeps fp32 on the CPU
DEPTHWISE_BF16_LIMIT = 0.05


def depthwise_share(model: torch.nn.Module, image_size: int) -> float:
    """The share of `model`'s convolution and linear multiply-adds spent in depthwise convolutions
    (one group per input channel), counted on one image of `image_size` in eval mode."""
    counts = {"depthwise": 0, "all": 0}

    def conv(m, _inputs, out):
        macs = out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        counts["all"] += macs
        counts["depthwise"] += macs if 1 < m.groups == m.in_channels else 0

    def linear(m, _inputs, out):
        counts["all"] += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        device = next(model.parameters()).device
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return counts["depthwise"] / max(counts["all"], 1)


def describe_cpu_choice(why: str, precision: str, channels_last: bool) -> str:
    """What `auto` chose on the CPU and why, as printed once and recorded (`Runtime.choice`)."""
    return f"auto on this CPU ({why}): {precision}, {'channels_last' if channels_last else 'NCHW'}"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask under Slurm, taskset or a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_workers(processes_per_node: int = 1, limit: int = 8) -> int:
    """Image-decoding workers per training process: the cores available, shared by the processes
    on the node (torchrun's LOCAL_WORLD_SIZE), at most `limit`; 0 (decode in the main process)
    where a process has a single core."""
    share = available_cores() // max(1, processes_per_node)
    return 0 if share <= 1 else min(limit, share)


def processes_per_node() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    dist: Dist
    #: why amp / channels_last are what they are, when `auto` chose them on the CPU (printed once, recorded)
    choice: str = ""
    #: bf16 chosen by `auto` on a CPU (then validation and test stay fp32: `for_evaluation`)
    auto_bf16: bool = False

    @classmethod
    def create(cls, device: str = "auto", amp: str = "auto", channels_last: str = "auto",
               cudnn_benchmark: bool = True, cpu_auto: bool = False) -> "Runtime":
        """"auto" = CUDA if visible (bf16 autocast and channels_last there), else CPU in fp32 --
        or, with `cpu_auto` (training), bf16 and channels_last on a CPU that runs bf16 natively
        when this is the only process: several processes (DDP) keep fp32 NCHW, so that N processes
        compute what one does."""
        check_mode("amp", amp, AMP_MODES)
        check_mode("channels_last", channels_last, CHANNELS_LAST_MODES)
        name = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise PamcError("device 'cuda' requested but no CUDA GPU is visible; use --device cpu")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise PamcError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
        dist = Dist.from_env(dev.type)
        if dev.type == "cuda":
            dev = torch.device("cuda", dist.local_rank if dist.enabled else (dev.index or 0))
            torch.cuda.set_device(dev)
            torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        fast = dev.type == "cuda"
        cpu_choice = cpu_auto and dev.type == "cpu" and "auto" in (amp, channels_last)
        if cpu_choice:
            feature = native_bf16()
            fast = feature is not None and not dist.enabled
            why = (f"{feature}, native bf16; one process" if fast else
                   "several processes" if dist.enabled else "no native bf16")
        use_amp = fast if AMP_MODES[amp] is None else AMP_MODES[amp]
        use_cl = fast if CHANNELS_LAST_MODES[channels_last] is None else CHANNELS_LAST_MODES[channels_last]
        choice = ""
        if cpu_choice:
            precision = ("bf16 autocast for training, fp32 for validation and test" if use_amp and amp == "auto"
                         else "bf16 autocast" if use_amp else "fp32")
            choice = describe_cpu_choice(why, precision, use_cl)
        return cls(dev, torch.bfloat16 if use_amp else None, use_cl, dist, choice,
                   auto_bf16=cpu_choice and use_amp and amp == "auto")

    @classmethod
    def from_config(cls, cfg, cpu_auto: bool = False) -> "Runtime":
        """From any object with the run settings' device / amp / channels_last / cudnn_benchmark."""
        return cls.create(cfg.device, cfg.amp, cfg.channels_last, cfg.cudnn_benchmark, cpu_auto)

    def record(self) -> dict:
        """What a run records of how it computed (model.json, results.json, and its resumable state)."""
        return {"device": self.device.type, "amp": "bf16" if self.amp_dtype is not None else "off",
                "channels_last": "on" if self.channels_last else "off", "processes": self.dist.world_size,
                **({"choice": self.choice} if self.choice else {})}

    def for_model(self, model: torch.nn.Module, image_size: int) -> "Runtime":
        """`auto`'s CPU choice, revised for the model: on the CPU, depthwise convolutions run slower
        in bf16 than in fp32, so a model that spends `DEPTHWISE_BF16_LIMIT` or more of its
        multiply-adds in them (MobileNet, EfficientNet) trains in fp32 where `auto` had chosen
        bf16; channels_last stays.  Measured (`benchmarks/bench_backbones.py --precisions
        fp32,bf16`, docs/speed.md): bf16 is 2.0-2.5x faster for ResNet-18, ConvNeXt-T (2 %
        depthwise) and the scene CNN, level for ConvNeXt-Atto (5 %), 1.1-1.4x slower for
        EfficientNet-Lite0 / -B0 and MobileNetV3 (8-9 %)."""
        if not self.auto_bf16:
            return self
        share = depthwise_share(model, image_size)
        if share < DEPTHWISE_BF16_LIMIT:
            return self
        why = (f"{native_bf16() or 'native bf16'}, native bf16; one process; {share:.0%} of the model's multiply-adds "
               "in depthwise convolutions, faster in fp32")
        return replace(self, amp_dtype=None, auto_bf16=False, choice=describe_cpu_choice(why, "fp32", self.channels_last))

    def for_evaluation(self) -> "Runtime":
        """Validation and test: in fp32 where `auto` chose bf16 for training on the CPU, so that
        `pamc eval` of a checkpoint (fp32 on the CPU) reproduces the run's numbers; otherwise as
        training (on CUDA, or with an explicit --amp).  Label feedback and "+ LI" are training
        and use the training precision."""
        return replace(self, amp_dtype=None) if self.auto_bf16 else self

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def prepare(self, images: torch.Tensor, flip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 batch -> normalised float on the device (flipped where asked), in the model's layout."""
        x = normalize_uint8(images.to(self.device, non_blocking=True))
        if flip is not None:
            x = flip_where(x, flip)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@torch.no_grad()
def predict(model: torch.nn.Module, images, rt: Runtime, alpha: Optional[float] = None,
            batch_size: int = 128, num_workers: int = 0) -> torch.Tensor:
    """Probabilities (N x C, float32, CPU) for every image; shared out and gathered under DDP."""
    plain = unwrap(model)
    batches = list(torch.split(rt.dist.shard(len(images)), batch_size))
    out = []
    with eval_mode(plain):
        for x in image_batches(images, batches, num_workers, pin_memory=rt.device.type == "cuda"):
            with rt.autocast():
                out.append(torch.sigmoid(plain(rt.prepare(x), alpha=alpha).float()))
    scores = torch.cat(out) if out else torch.zeros(0, plain.num_classes, device=rt.device)
    return rt.dist.all_gather_cat(scores).cpu()
