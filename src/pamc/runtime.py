"""Where and how tensors are computed: device, mixed precision, memory format, processes.

Training, evaluation, prediction and explanation all run through a `Runtime`, so none of them
needs the training engine to pick a device or to predict in batches.
"""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    dist: Dist

    @classmethod
    def create(cls, device: str = "auto", amp: str = "auto", channels_last: str = "auto",
               cudnn_benchmark: bool = True) -> "Runtime":
        """"auto" = CUDA if visible (bf16 autocast and channels_last there), else CPU in fp32."""
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
        on_gpu = dev.type == "cuda"
        use_amp = on_gpu if AMP_MODES[amp] is None else AMP_MODES[amp]
        use_cl = on_gpu if CHANNELS_LAST_MODES[channels_last] is None else CHANNELS_LAST_MODES[channels_last]
        return cls(dev, torch.bfloat16 if use_amp else None, use_cl, dist)

    @classmethod
    def from_config(cls, cfg) -> "Runtime":
        """From any object with the run settings' device / amp / channels_last / cudnn_benchmark."""
        return cls.create(cfg.device, cfg.amp, cfg.channels_last, cfg.cudnn_benchmark)

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
