"""timm backbones by name: creation, pretrained weights from a tag or a file, freezing.

Compute nodes are often offline, so `pretrained=` takes a local file as well as a timm tag;
`jobs/prefetch_weights.py` fills the cache on a login node.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from sslrun import cifar_cnn  # noqa: F401  (registers model=cifar_cnn with timm)
from sslrun.errors import UserError

log = logging.getLogger(__name__)


def check_model_name(name: str) -> None:
    base = name.split(".", 1)[0]
    if not timm.is_model(base):
        close = timm.list_models(f"*{base[:6]}*")[:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"model={name}: not a timm model{hint}")


def model_kwargs(name: str, image_size: int | None) -> dict[str, int]:
    """`img_size` for models built for one input size (ViT, Swin...: timm's `fixed_input_size`),
    so a ViT at image_size=96 gets 96 px position embeddings instead of failing at the first batch."""
    if image_size is None:
        return {}
    try:
        pcfg = timm.models.get_pretrained_cfg(name.split(".", 1)[0])
    except (RuntimeError, KeyError, ValueError):
        pcfg = None
    if pcfg is None or not getattr(pcfg, "fixed_input_size", False):
        return {}
    if tuple(pcfg.input_size[-2:]) == (image_size, image_size):
        return {}
    return {"img_size": image_size}


def check_model(name: str, pretrained: str, image_size: int) -> None:
    """The model name, the pretrained tag or file, and the input size, on the login node.

    A model of a fixed input size is built on the meta device (no memory, no weights) with the
    asked size, so a size it cannot take (not a multiple of the patch) is refused at submit time.
    """
    check_model_name(name)
    base = name.split(".", 1)[0]
    if pretrained not in ("", "none", "timm") and Path(pretrained).is_file():
        weights_file_keys(Path(pretrained))  # readable, and a state_dict: found before the queue, not after
    elif pretrained not in ("", "none", "timm"):
        if "/" in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors"):
            raise UserError(f"pretrained={pretrained}: no such weights file")
        tags = [m.split(".", 1)[1] for m in timm.list_pretrained(f"{base}.*") if "." in m]
        if pretrained not in tags:
            hint = f" (expected one of {', '.join(tags[:8])})" if tags else " (timm has no weights for it)"
            raise UserError(f"pretrained={pretrained}: not a timm tag of model={base}{hint}")
    kwargs = model_kwargs(name, image_size)
    if kwargs:
        try:
            with torch.device("meta"):
                timm.create_model(base, pretrained=False, num_classes=2, **kwargs)
        except Exception as err:  # noqa: BLE001 - any refusal of the size is the user's to fix
            why = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise UserError(f"model={name} image_size={image_size}: the model cannot take this size ({why})") from None


def create_model(name: str, num_classes: int, pretrained: str = "", frozen: bool = False,
                 image_size: int | None = None) -> nn.Module:
    """A timm model with a `num_classes` head; `frozen` trains the head alone.

    Weights come through timm's own loader: a tag from its registry or cache, a file through
    `pretrained_cfg_overlay=dict(file=...)`. timm then adapts them as for its own weights: the
    classifier is dropped (left at init) when `num_classes` differs from the weights' config
    (1000 for ImageNet), a `model` / `state_dict` entry and a `module.` prefix are unwrapped, and
    .safetensors files are read.
    """
    check_model_name(name)
    kwargs: dict = dict(model_kwargs(name, image_size))
    model_name, file = name, None
    if pretrained not in ("", "none") and Path(pretrained).is_file():
        file = Path(pretrained)
        keys = weights_file_keys(file)  # an unreadable file: one line, before timm's traceback
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(file.resolve())})
    elif pretrained not in ("", "none"):
        kwargs["pretrained"] = True
        if pretrained != "timm":
            model_name = f"{name.split('.', 1)[0]}.{pretrained}"
    try:
        model = timm.create_model(model_name, num_classes=num_classes, **kwargs)
    except (RuntimeError, OSError, ValueError, KeyError) as err:  # a download, a file, a shape timm refuses
        why = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise UserError(f"model={name} pretrained={pretrained}: cannot load weights ({why})") from None
    if file is not None:
        own = model.state_dict()
        loaded = [k for k in own if k in keys]
        if not loaded:
            raise UserError(f"pretrained={file}: no tensor matches model {name} (weights of another architecture?)")
        log.info("loaded %d of %d tensors of %s from %s", len(loaded), len(own), name, file)
    if frozen:
        freeze_backbone(model)
    return model


def weights_file_keys(path: Path) -> set[str]:
    """The tensor names of a weights file, read cheaply (memory-mapped, or safetensors' header),
    unwrapped as timm unwraps them, to see that the file fits the model at all."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return set(f.keys())
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"pretrained={path}: cannot read weights ({type(err).__name__}: {str(err)[:120]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise UserError(f"pretrained={path}: expected a state_dict (names -> tensors), got {type(state).__name__}")
    return set(timm.models.clean_state_dict(state))


def freeze_backbone(model: nn.Module) -> None:
    """Train the classifier alone: the backbone's weights AND its batch-norm statistics fixed.

    requires_grad=False alone leaves BatchNorm in training mode, so every forward still moves
    the running statistics (and normalises with batch statistics): the "frozen" features drift.
    timm's freeze() turns each BatchNorm2d into a FrozenBatchNorm2d, which always uses its stored
    statistics, whatever model.train() is called with.
    """
    from timm.utils.model import freeze

    freeze(model, include_bn_running_stats=True)
    for p in model.get_classifier().parameters():
        p.requires_grad_(True)


def data_config(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation mean and std the backbone was trained with."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def prefetch_weights(name: str, tag: str = "", out: Path | None = None) -> str:
    """Download a timm model's pretrained weights into the HF/timm cache (needs the network,
    so: a login node), and optionally save them as a state_dict file for `pretrained=FILE`
    on compute nodes that are offline. Returns the full timm name that was fetched."""
    check_model_name(name)
    full = f"{name.split('.', 1)[0]}.{tag}" if tag else name
    try:
        model = timm.create_model(full, pretrained=True)
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(f"{full}: cannot download pretrained weights ({str(err).splitlines()[0][:160]})") from None
    if out is not None:
        import io

        from sslrun.checkpoint import atomic_write_bytes

        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, buf.getvalue())
        log.info("saved %d tensors of %s to %s", len(model.state_dict()), full, out)
    return full
