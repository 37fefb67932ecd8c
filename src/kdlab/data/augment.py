"""Batched, device-side image augmentation (airbench style): whole batches at once, no PIL, no per-sample loop.

Every function takes a batch ``x`` of shape ``(B, C, H, W)`` -- uint8 in [0, 255] or float in [0, 1] -- and
an optional ``torch.Generator`` living on ``x``'s device, and draws per-sample parameters from it in one
call, so the same generator state gives the same output. Geometric ops (crop, flip, cutout) keep the
dtype; ops that interpolate or mix colours (rrc, colour jitter, grayscale, blur) need float input, which
:class:`Augment` arranges by converting uint8 to float in [0, 1] at the first such op. :func:`normalize`
(always last in an :class:`Augment`) returns float32, channels_last.

Colour ops on 1-channel images: grayscale is a no-op; colour jitter applies brightness and contrast only.
"""

from __future__ import annotations

import difflib
import functools
import math
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import DataError

__all__ = [
    "POLICY_NAMES",
    "Augment",
    "build_augment",
    "default_policy",
    "augment_for",
    "crop_offsets",
    "pad_batch",
    "crop_with_offsets",
    "random_crop",
    "flip_where",
    "hflip",
    "rrc_params",
    "resized_crop",
    "random_resized_crop",
    "color_jitter",
    "rgb_to_gray",
    "grayscale",
    "gaussian_blur",
    "cutout_at",
    "cutout",
    "normalize",
]

POLICY_NAMES = ("crop", "flip", "rrc", "color_jitter", "grayscale", "blur", "cutout")

# ITU-R 601-2 luma, as PIL's convert("L") and torchvision's rgb_to_grayscale
_LUMA = (0.299, 0.587, 0.114)


def _rand(n: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, device=x.device)


def _uniform(n: int, lo: float, hi: float, x: Tensor, generator: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * _rand(n, x, generator)


def _check4d(x: Tensor, op: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{op}: expected a batch (B, C, H, W), got shape {tuple(x.shape)}")


def _check_float(x: Tensor, op: str) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{op}: needs a float batch in [0, 1] (got {x.dtype}); Augment converts uint8 for you")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


# ------------------------------------------------------------------------------------------------- crop


def crop_offsets(
    batch: int, padding: int, x: Tensor, generator: torch.Generator | None = None, *, extra: tuple[int, int] = (0, 0)
) -> tuple[Tensor, Tensor]:
    """Per-sample crop offsets ``(oy, ox)`` in ``[0, 2*padding + extra]`` (offsets into the padded image)."""
    oy = torch.randint(0, 2 * padding + extra[0] + 1, (batch,), generator=generator, device=x.device)
    ox = torch.randint(0, 2 * padding + extra[1] + 1, (batch,), generator=generator, device=x.device)
    return oy, ox


_TORCH_PAD_MODE = {
    "reflect": "reflect",
    "zeros": "constant",
    "constant": "constant",
    "replicate": "replicate",
    "edge": "replicate",
}


def pad_batch(x: Tensor, padding: int, mode: str = "reflect") -> Tensor:
    """Pad the last two dims of a (B, C, H, W) batch by ``padding`` on every side (any dtype).

    ``mode``: ``reflect`` (mirror without repeating the edge, as ``F.pad``), ``zeros`` or ``replicate``.
    Uses ``F.pad``; where a backend lacks it for the dtype (uint8 reflect on some devices) an equivalent
    index-based pad is used.
    """
    if mode not in _TORCH_PAD_MODE:
        raise ValueError(f"unknown padding_mode {mode!r} (use reflect, zeros or replicate)")
    if padding == 0:
        return x
    H, W = x.shape[-2:]
    if mode == "reflect" and padding >= min(H, W):
        raise ValueError(f"reflect padding {padding} must be smaller than the image ({H}x{W})")
    try:
        return F.pad(x, (padding,) * 4, mode=_TORCH_PAD_MODE[mode])
    except (RuntimeError, NotImplementedError):  # pragma: no cover - backend without this pad for the dtype
        if _TORCH_PAD_MODE[mode] == "constant":
            raise
        return _pad_by_index(x, padding, mode)


def _pad_by_index(x: Tensor, padding: int, mode: str) -> Tensor:
    """Reflect/replicate padding as two ``index_select`` calls (works for every dtype and device)."""

    def index(n: int) -> Tensor:
        i = torch.arange(-padding, n + padding, device=x.device)
        if mode == "reflect":
            i = i.abs()
            return torch.where(i >= n, 2 * (n - 1) - i, i)
        return i.clamp(0, n - 1)

    H, W = x.shape[-2:]
    return x.index_select(-2, index(H)).index_select(-1, index(W))


def crop_with_offsets(
    x: Tensor,
    oy: Tensor,
    ox: Tensor,
    padding: int,
    *,
    padding_mode: str = "reflect",
    size: int | Sequence[int] | None = None,
) -> Tensor:
    """Crop sample ``b`` of the ``padding``-padded batch at rows ``oy[b]:oy[b]+h`` and columns ``ox[b]:ox[b]+w``.

    Equivalent to ``F.pad(x, [padding]*4, mode)[b, :, oy:oy+h, ox:ox+w]`` for every sample: the batch is
    padded once, every crop window is a strided view (``unfold``), and one gather picks each sample's
    window. Same dtype as ``x``.
    """
    _check4d(x, "crop")
    B, C, H, W = x.shape
    h, w = _pair(size) if size is not None else (H, W)
    xp = pad_batch(x, padding, padding_mode)
    if h > xp.shape[2] or w > xp.shape[3]:
        raise ValueError(f"crop size {h}x{w} larger than the padded image {xp.shape[2]}x{xp.shape[3]}")
    windows = xp.unfold(2, h, 1).unfold(3, w, 1)  # (B, C, Hp-h+1, Wp-w+1, h, w), a view
    b = torch.arange(B, device=x.device)
    return windows[b, :, oy.to(x.device).long(), ox.to(x.device).long()]  # (B, C, h, w)


def random_crop(
    x: Tensor,
    padding: int = 4,
    generator: torch.Generator | None = None,
    *,
    padding_mode: str = "reflect",
    size: int | Sequence[int] | None = None,
) -> Tensor:
    """Random crop of size ``size`` (default: the input size) from the padded image, per-sample offsets."""
    _check4d(x, "crop")
    B, _, H, W = x.shape
    h, w = _pair(size) if size is not None else (H, W)
    extra = (H - h, W - w)
    if min(extra) + 2 * padding < 0:
        raise ValueError(f"crop size {h}x{w} larger than the padded image {H + 2 * padding}x{W + 2 * padding}")
    oy, ox = crop_offsets(B, padding, x, generator, extra=extra)
    return crop_with_offsets(x, oy, ox, padding, padding_mode=padding_mode, size=(h, w))


# ------------------------------------------------------------------------------------------------- flip


def flip_where(x: Tensor, mask: Tensor) -> Tensor:
    """Horizontally flip the samples where ``mask`` (bool, (B,)) is true."""
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(3), x)


def hflip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Flip each sample left-right with probability ``p``."""
    _check4d(x, "flip")
    return flip_where(x, _rand(x.shape[0], x, generator) < p)


# -------------------------------------------------------------------------------------------------- rrc


def rrc_params(
    x: Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample crop boxes ``(top, left, h, w)`` as torchvision's RandomResizedCrop draws them.

    Each sample tries ``attempts`` (area fraction, log-aspect) pairs at once and keeps the first that fits;
    samples with none fall back to the central crop clipped to ``ratio``.
    """
    B, _, H, W = x.shape
    area = H * W
    s = _uniform(B * attempts, scale[0], scale[1], x, generator).view(B, attempts) * area
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(_uniform(B * attempts, lo, hi, x, generator)).view(B, attempts)
    w = torch.round(torch.sqrt(s * r))
    h = torch.round(torch.sqrt(s / r))
    ok = (w > 0) & (h > 0) & (w <= W) & (h <= H)
    first = ok.float().argmax(dim=1, keepdim=True)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # fallback: central crop with the aspect clipped into ratio
    in_ratio = W / H
    if in_ratio < ratio[0]:
        fw, fh = W, round(W / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(H * ratio[1]), H
    else:
        fw, fh = W, H
    any_ok = ok.any(dim=1)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    u = _rand(2 * B, x, generator).view(2, B)
    top = torch.where(any_ok, torch.floor(u[0] * (H - h + 1)).clamp(max=H - h), torch.full_like(h, (H - fh) // 2))
    left = torch.where(any_ok, torch.floor(u[1] * (W - w + 1)).clamp(max=W - w), torch.full_like(w, (W - fw) // 2))
    return top, left, h, w


def resized_crop(
    x: Tensor,
    top: Tensor,
    left: Tensor,
    h: Tensor,
    w: Tensor,
    size: int | Sequence[int],
    *,
    mode: str = "bilinear",
) -> Tensor:
    """Crop box ``(top, left, h, w)`` of each sample, resized to ``size`` with one ``grid_sample`` call.

    Pixel-centre aligned (``align_corners=False``): a full-image box at the input size is the identity.
    Float input required.
    """
    _check_float(x, "rrc")
    B, C, H, W = x.shape
    oh, ow = _pair(size)
    top, left, h, w = (t.to(device=x.device, dtype=torch.float32) for t in (top, left, h, w))
    theta = torch.zeros(B, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = w / W
    theta[:, 0, 2] = (2 * left + w) / W - 1
    theta[:, 1, 1] = h / H
    theta[:, 1, 2] = (2 * top + h) / H - 1
    grid = F.affine_grid(theta, [B, C, oh, ow], align_corners=False)
    xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = F.grid_sample(xs, grid.to(xs.dtype), mode=mode, padding_mode="border", align_corners=False)
    return out.to(x.dtype)


def random_resized_crop(
    x: Tensor,
    size: int | Sequence[int],
    generator: torch.Generator | None = None,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """Per-sample random-resized-crop (area fraction ``scale``, aspect ``ratio``), bilinear, float input."""
    _check4d(x, "rrc")
    top, left, h, w = rrc_params(x, scale, ratio, generator)
    return resized_crop(x, top, left, h, w, size)


# ----------------------------------------------------------------------------------------------- colour


def rgb_to_gray(x: Tensor) -> Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` as ``(B, 1, H, W)`` (1-channel input is returned as is)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = x.unbind(1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    delta = maxc - minc
    eq = delta == 0
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    dc = torch.where(eq, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / dc, (maxc - g) / dc, (maxc - b) / dc
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(eq, torch.zeros_like(hue), (hue / 6.0) % 1.0)
    return hue, s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    # closed form: channel n in (R, G, B) = v - v*s*clamp(min(k, 4-k), 0, 1), k = (n' + 6h) mod 6, n' = 5, 3, 1
    n = torch.arange(5, 0, -2, device=h.device, dtype=h.dtype).view(1, 3, 1, 1)  # made on the device: no copy
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def color_jitter(
    x: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    p: float = 1.0,
) -> Tensor:
    """Per-sample colour jitter on a float batch in [0, 1], applied to each sample with probability ``p``.

    Factors are drawn like torchvision's ColorJitter (brightness/contrast/saturation uniform in
    ``[max(0, 1-v), 1+v]``, hue shift uniform in ``[-hue, hue]``) but applied in the fixed order brightness,
    contrast, saturation, hue. Contrast blends with each image's mean luma, saturation with its per-pixel
    luma. On 1-channel images only brightness and contrast act.
    """
    _check4d(x, "color_jitter")
    _check_float(x, "color_jitter")
    B, C = x.shape[:2]
    draws = _rand(5 * B, x, generator).view(5, B)
    apply = draws[4] < p

    def factor(v: float, u: Tensor) -> Tensor:
        lo, hi = max(0.0, 1.0 - v), 1.0 + v
        return torch.where(apply, lo + (hi - lo) * u, torch.ones_like(u)).to(x.dtype).view(B, 1, 1, 1)

    out = x
    if brightness > 0:
        out = (out * factor(brightness, draws[0])).clamp_(0, 1)
    if contrast > 0:
        f = factor(contrast, draws[1])
        m = rgb_to_gray(out).mean(dim=(1, 2, 3), keepdim=True)
        out = (f * out + (1 - f) * m).clamp_(0, 1)
    if C == 3 and saturation > 0:
        f = factor(saturation, draws[2])
        g = rgb_to_gray(out)
        out = (f * out + (1 - f) * g).clamp_(0, 1)
    if C == 3 and hue > 0:
        shift = torch.where(apply, (2 * draws[3] - 1) * hue, torch.zeros_like(draws[3])).to(x.dtype).view(B, 1, 1)
        hh, ss, vv = _rgb_to_hsv(out)
        out = _hsv_to_rgb((hh + shift) % 1.0, ss, vv)
    return out


def grayscale(x: Tensor, generator: torch.Generator | None = None, p: float = 0.2) -> Tensor:
    """Replace each RGB sample by its luma (repeated over 3 channels) with probability ``p``; 1-channel: no-op."""
    _check4d(x, "grayscale")
    if x.shape[1] != 3:
        return x
    _check_float(x, "grayscale")
    mask = _rand(x.shape[0], x, generator) < p
    return torch.where(mask[:, None, None, None], rgb_to_gray(x).expand_as(x), x)


def gaussian_blur(
    x: Tensor,
    kernel_size: int,
    sigma: tuple[float, float] = (0.1, 2.0),
    generator: torch.Generator | None = None,
    *,
    p: float = 0.5,
) -> Tensor:
    """Gaussian blur with per-sample sigma ~ U(sigma), applied with probability ``p``; separable, reflect pad.

    One grouped 1-D convolution per axis for the whole batch (each sample its own kernel).
    """
    _check4d(x, "blur")
    _check_float(x, "blur")
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"blur kernel_size must be odd and positive, got {kernel_size}")
    B, C, H, W = x.shape
    u = _rand(2 * B, x, generator).view(2, B)
    sig = sigma[0] + (sigma[1] - sigma[0]) * u[0]
    apply = u[1] < p
    half = kernel_size // 2
    if half == 0:
        return x
    r = torch.arange(-half, half + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-(r[None] ** 2) / (2 * sig[:, None].float() ** 2))
    k = k / k.sum(dim=1, keepdim=True)
    delta = torch.zeros_like(k)
    delta[:, half] = 1
    k = torch.where(apply[:, None], k, delta).to(x.dtype)  # (B, k)
    weight = k.repeat_interleave(C, dim=0)  # (B*C, k)
    y = x.reshape(1, B * C, H, W)
    mode = "reflect" if half < min(H, W) else "replicate"
    y = F.pad(y, (half, half, 0, 0), mode=mode)
    y = F.conv2d(y, weight.view(B * C, 1, 1, kernel_size), groups=B * C)
    y = F.pad(y, (0, 0, half, half), mode=mode)
    y = F.conv2d(y, weight.view(B * C, 1, kernel_size, 1), groups=B * C)
    return y.view(B, C, H, W)


# ----------------------------------------------------------------------------------------------- cutout


def cutout_at(x: Tensor, y0: Tensor, x0: Tensor, size: int) -> Tensor:
    """Zero the square ``[y0, y0+size) x [x0, x0+size)`` of each sample (clipped at the borders)."""
    _check4d(x, "cutout")
    B, _, H, W = x.shape
    ar_h = torch.arange(H, device=x.device)
    ar_w = torch.arange(W, device=x.device)
    y0 = y0.to(x.device).long()[:, None]
    x0 = x0.to(x.device).long()[:, None]
    rows = (ar_h >= y0) & (ar_h < y0 + size)  # (B, H)
    cols = (ar_w >= x0) & (ar_w < x0 + size)  # (B, W)
    mask = (rows[:, :, None] & cols[:, None, :])[:, None]  # (B, 1, H, W)
    return x.masked_fill(mask, 0)


def cutout(
    x: Tensor,
    size: int,
    generator: torch.Generator | None = None,
    *,
    p: float = 1.0,
    inside: bool = False,
) -> Tensor:
    """Cutout (DeVries & Taylor 2017): zero a ``size`` x ``size`` square per sample, with probability ``p``.

    Default: the square's centre is uniform over the image and the square is clipped at the borders (as in
    the paper's code). ``inside=True`` keeps the whole square inside the image. The zero is applied before
    normalisation (a black square).
    """
    _check4d(x, "cutout")
    B, _, H, W = x.shape
    if inside:
        if size > min(H, W):
            raise ValueError(f"cutout size {size} larger than the image {H}x{W}")
        y0 = torch.randint(0, H - size + 1, (B,), generator=generator, device=x.device)
        x0 = torch.randint(0, W - size + 1, (B,), generator=generator, device=x.device)
    else:
        y0 = torch.randint(0, H, (B,), generator=generator, device=x.device) - size // 2
        x0 = torch.randint(0, W, (B,), generator=generator, device=x.device) - size // 2
    skip = _rand(B, x, generator) >= p
    y0 = torch.where(skip, torch.full_like(y0, -(10 * size + H)), y0)  # off-image square: no-op
    return cutout_at(x, y0, x0, size)


# -------------------------------------------------------------------------------------------- normalise


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float], *, channels_last: bool = True) -> Tensor:
    """``(x/255 - mean)/std`` for uint8 (``(x - mean)/std`` for float in [0, 1]) as one fused multiply-add.

    Returns float32, channels_last in memory for 4-D input when ``channels_last``.
    """
    C = x.shape[1] if x.dim() == 4 else x.shape[0]
    if len(mean) != C or len(std) != C:
        raise ValueError(f"normalize: {C} channels but mean/std of length {len(mean)}/{len(std)}")
    scale, shift = _affine(tuple(map(float, mean)), tuple(map(float, std)), x.device, x.dtype == torch.uint8)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 3:
        scale, shift = scale[0], shift[0]
    return torch.addcmul(shift, x.to(torch.float32), scale)


@functools.lru_cache(maxsize=64)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, from_uint8: bool) -> tuple[Tensor, Tensor]:
    # cached per device: no host-to-device copy (and no CUDA sync) per batch
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = 1.0 / (s * 255.0) if from_uint8 else 1.0 / s
    shift = -m / s
    return (scale.float().view(1, -1, 1, 1).to(device), shift.float().view(1, -1, 1, 1).to(device))


# ---------------------------------------------------------------------------------------------- Augment


@dataclass
class _Op:
    name: str
    fn: Callable[[Tensor, torch.Generator | None], Tensor]
    needs_float: bool


@dataclass
class Augment:
    """A fixed sequence of batched ops followed by :func:`normalize`: ``aug(x_uint8, generator) -> float32``."""

    ops: list[_Op]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels_last: bool = True
    config: dict = field(default_factory=dict)

    @property
    def policy(self) -> list[str]:
        return [op.name for op in self.ops]

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check4d(x, "Augment")
        for op in self.ops:
            if op.needs_float and not x.is_floating_point():
                x = x.to(torch.float32).mul_(1.0 / 255.0)
            x = op.fn(x, generator)
        return normalize(x, self.mean, self.std, channels_last=self.channels_last)

    def __repr__(self) -> str:
        return f"Augment({self.policy + ['normalize']}, mean={tuple(round(m, 4) for m in self.mean)}, std={tuple(round(s, 4) for s in self.std)})"


def default_policy(dataset: str) -> list[str]:
    """``["crop"]`` for digits (no flip: digits are not mirror symmetric), ``["crop", "flip"]`` otherwise."""
    return ["crop"] if dataset.split(":")[0].lower() == "digits" else ["crop", "flip"]


def build_augment(
    policy: Sequence[str],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int | Sequence[int],
    crop_padding: int = 4,
    padding_mode: str = "reflect",
    flip_p: float = 0.5,
    rrc_scale: tuple[float, float] = (0.08, 1.0),
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    blur_kernel: int | None = None,
    blur_p: float = 0.5,
    cutout_size: int | None = None,
    cutout_p: float = 1.0,
    channels_last: bool = True,
) -> Augment:
    """Build an :class:`Augment` from policy names (in order) among ``crop, flip, rrc, color_jitter, grayscale,
    blur, cutout``; normalisation is always appended last.

    Defaults follow the common CIFAR recipes: crop padding 4 (reflect), flip p=0.5, RandomResizedCrop
    scale (0.08, 1) ratio (3/4, 4/3), SimCLR/SupCon colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8,
    grayscale p=0.2, blur sigma (0.1, 2) with a kernel of ~10% of the image (odd, >= 3) and p=0.5,
    cutout of half the image side.
    """
    h, w = _pair(image_size)
    unknown = [p for p in policy if p not in POLICY_NAMES]
    if unknown:
        hints = [
            f"{u!r} (did you mean {difflib.get_close_matches(u, POLICY_NAMES, 1, 0.5)[0]!r}?)"
            if difflib.get_close_matches(u, POLICY_NAMES, 1, 0.5)
            else repr(u)
            for u in unknown
        ]
        raise DataError(f"unknown augmentation {', '.join(hints)}; known: {', '.join(POLICY_NAMES)} (normalize is implicit)")
    dup = sorted({p for p in policy if list(policy).count(p) > 1})
    if dup:
        raise DataError(f"augmentation policy lists {', '.join(dup)} more than once: {list(policy)}")
    if len(mean) != len(std) or not mean:
        raise DataError(f"mean/std must be per-channel and of equal length, got {mean} / {std}")
    kernel = blur_kernel if blur_kernel is not None else max(3, (int(0.1 * min(h, w)) // 2) * 2 + 1)
    csize = cutout_size if cutout_size is not None else max(1, min(h, w) // 2)
    b, c, s, hue = jitter
    makers: dict[str, tuple[Callable[[Tensor, torch.Generator | None], Tensor], bool]] = {
        "crop": (lambda x, g: random_crop(x, crop_padding, g, padding_mode=padding_mode, size=(h, w)), False),
        "flip": (lambda x, g: hflip(x, g, flip_p), False),
        "rrc": (lambda x, g: random_resized_crop(x, (h, w), g, scale=rrc_scale, ratio=rrc_ratio), True),
        "color_jitter": (lambda x, g: color_jitter(x, b, c, s, hue, g, p=jitter_p), True),
        "grayscale": (lambda x, g: grayscale(x, g, grayscale_p), True),
        "blur": (lambda x, g: gaussian_blur(x, kernel, blur_sigma, g, p=blur_p), True),
        "cutout": (lambda x, g: cutout(x, csize, g, p=cutout_p), False),
    }
    ops = [_Op(name, *makers[name]) for name in policy]
    config = dict(
        policy=list(policy),
        image_size=(h, w),
        crop_padding=crop_padding,
        padding_mode=padding_mode,
        flip_p=flip_p,
        rrc_scale=rrc_scale,
        rrc_ratio=rrc_ratio,
        jitter=jitter,
        jitter_p=jitter_p,
        grayscale_p=grayscale_p,
        blur_sigma=blur_sigma,
        blur_kernel=kernel,
        blur_p=blur_p,
        cutout_size=csize,
        cutout_p=cutout_p,
    )
    return Augment(ops, tuple(float(m) for m in mean), tuple(float(v) for v in std), channels_last, config)


def augment_for(dataset, policy: Sequence[str] | None = None, **overrides) -> Augment:
    """The per-dataset default :class:`Augment` for an :class:`~kdlab.data.base.ArrayDataset` (or a
    :class:`~kdlab.data.streaming.StreamingImageFolder`).

    Policy: :func:`default_policy` unless given; image size from the data; crop padding 1 for images of 16
    pixels or less (8x8 digits), 4 otherwise; mean/std from the dataset (computed if it carries none);
    ``overrides`` go to :func:`build_augment`.
    """
    from .sources import channel_stats

    _, H, W = dataset.image_shape
    mean, std = dataset.mean, dataset.std
    if not mean or not std:
        mean, std = channel_stats(dataset.images.cpu())
    kw = dict(mean=mean, std=std, image_size=(H, W), crop_padding=1 if min(H, W) <= 16 else 4)
    kw.update(overrides)
    return build_augment(list(policy) if policy is not None else default_policy(dataset.name), **kw)
