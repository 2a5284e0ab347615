"""Synthetic, deterministic brain-MRI-like (or chest-X-ray-like) phantom with lesions.

The phantom needs no download: every image is drawn analytically with numpy on a
coordinate grid from a seed. Normal images vary along a fixed, ordered list of
factors of variation (:func:`factor_names`); the first ``intrinsic_dim`` of them are
drawn per image (uniformly within their range), the rest are held at the middle of
their range. A smooth random tissue texture and mild pixel noise are added inside the
head. Abnormal test images are fresh normal images with one soft lesion (brighter or
darker) centred in brain tissue, and a binary mask of the pixels where the lesion
profile exceeds 0.5.

Intensities are built on a [0, 1] scale (background 0) and returned as ``2 * I - 1``,
so the background is exactly -1. ``texture``, ``noise`` and the lesion contrast are
amplitudes on that [0, 1] scale.

Splits: ``train`` is normal only; ``test`` holds ``n_test_normal`` normal images
followed by ``n_test_abnormal`` abnormal ones, and ``test_masks`` covers every test image
(all zero for normal ones). ``val`` holds ``n_val`` normal images, followed by
``n_val_abnormal`` abnormal ones when asked for (default 0): a labelled validation split
with its own lesions and masks, so that a search or a threshold can be chosen without
test labels (``val_auc``, ``val_ap`` and the Dice threshold come from it). Without
abnormal validation images ``val_labels`` is all zero and ``val_masks`` is None.
Each split draws from its own random streams, so changing ``n_test_abnormal`` never
changes a training image, and the first ``n`` images of a split do not depend on how
many more are asked for.

Example:
    >>> from ae4ad.data import load_dataset
    >>> ds = load_dataset("phantom", n_train=8, n_val=2, n_test_normal=3,
    ...                   n_test_abnormal=3, seed=1)
    >>> tuple(ds.train.shape), tuple(ds.test_masks.shape), ds.test_labels.tolist()
    ((8, 1, 32, 32), (6, 1, 32, 32), [0, 0, 0, 1, 1, 1])
    >>> float(ds.train.min()) >= -1.0 and float(ds.train.max()) <= 1.0
    True
    >>> ds.info["factor_names"][:3], ds.info["intrinsic_dim"]
    (['position_x', 'position_y', 'scale'], 6)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ae4ad.data.base import AnomalyDataset, DataError, register_source

__all__ = [
    "Factor",
    "PhantomImages",
    "PhantomParams",
    "MAX_TEXTURE_RANK",
    "factor_names",
    "factors_of",
    "generate_images",
    "load_phantom",
    "texture_modes",
]


@dataclass(frozen=True)
class Factor:
    """One factor of variation: drawn uniformly in [low, high], else fixed at the middle."""

    name: str
    low: float
    high: float
    description: str

    @property
    def fixed(self) -> float:
        return 0.5 * (self.low + self.high)


_N_GYRI = 9

BRAIN_FACTORS: tuple[Factor, ...] = (
    Factor("position_x", -0.06, 0.06, "horizontal offset of the head (image half-widths)"),
    Factor("position_y", -0.06, 0.06, "vertical offset of the head (image half-widths)"),
    Factor("scale", 0.88, 1.04, "overall head size"),
    Factor("rotation", -0.26, 0.26, "in-plane rotation (radians)"),
    Factor("aspect_ratio", 0.88, 1.08, "width of the head relative to its height"),
    Factor("white_matter_intensity", 0.62, 0.82, "white matter intensity"),
    Factor("grey_matter_intensity", 0.38, 0.52, "cortex (grey matter) intensity"),
    Factor("ventricle_size", 0.6, 1.5, "size of the lateral ventricles"),
    Factor("ventricle_offset", -0.08, 0.08, "vertical shift of the ventricles"),
    Factor("skull_thickness", 0.04, 0.09, "thickness of the skull ring"),
    Factor("gyri_depth", 0.02, 0.09, "depth of the cortical folding"),
    Factor("csf_intensity", 0.06, 0.2, "intensity of the cerebrospinal fluid"),
    Factor("skull_intensity", 0.7, 0.95, "intensity of the skull/scalp ring"),
    Factor("gyri_phase", 0.0, 2 * math.pi / _N_GYRI, "angular phase of the folding"),
)

CHEST_FACTORS: tuple[Factor, ...] = (
    Factor("position_x", -0.05, 0.05, "horizontal offset of the thorax"),
    Factor("position_y", -0.05, 0.05, "vertical offset of the thorax"),
    Factor("scale", 0.9, 1.04, "overall thorax size"),
    Factor("rotation", -0.12, 0.12, "in-plane rotation (radians)"),
    Factor("aspect_ratio", 0.9, 1.06, "width of the thorax relative to its height"),
    Factor("lung_intensity", 0.08, 0.22, "intensity of the lung fields"),
    Factor("heart_size", 0.8, 1.2, "size of the heart shadow"),
    Factor("heart_offset", -0.06, 0.06, "horizontal shift of the heart"),
    Factor("diaphragm_height", 0.22, 0.42, "height of the diaphragm domes"),
    Factor("rib_contrast", 0.04, 0.14, "brightness of the ribs over the lungs"),
    Factor("soft_tissue_intensity", 0.36, 0.5, "intensity of the soft tissue"),
    Factor("rib_spacing", 0.17, 0.23, "distance between ribs"),
)

_SPLIT_IDS = {"train": 0, "val": 1, "test_normal": 2, "test_abnormal": 3, "val_abnormal": 4}
_STREAM_FACTORS, _STREAM_TEXTURE, _STREAM_NOISE, _STREAM_LESION = 0, 1, 2, 3
_CHUNK_PIXELS = 2**18  # pixels rendered at once (keeps the working arrays in cache)
_N_CANDIDATES = 48  # lesion centre candidates per image
_LESION_CONTRAST_DEFAULT = (0.3, 0.6)
MAX_TEXTURE_RANK = 128
"""The largest ``texture_rank``: the modes of total frequency up to 15."""


# ----------------------------------------------------------------------------- helpers


def _inside(d: np.ndarray, w: float | np.ndarray) -> np.ndarray:
    """Soft indicator of ``d < 0``: 1 for d <= -w, 0 for d >= w, smoothstep between."""
    t = np.clip(0.5 - d / (2.0 * w), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse_d(x: np.ndarray, y: np.ndarray, a, b) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse with semi-axes a, b."""
    return (np.sqrt((x / a) ** 2 + (y / b) ** 2) - 1.0) * np.sqrt(a * b)


def _lerp(base: np.ndarray, value, weight: np.ndarray) -> np.ndarray:
    return base + weight * (value - base)


def _cos_multiple(x, y, r, n: int, phase) -> np.ndarray:
    """cos(n * atan2(y, x) + phase) by complex powers (much faster than arctan2)."""
    inv = 1.0 / np.maximum(r, 1e-6)
    zr, zi = x * inv, y * inv
    pr, pi = np.ones_like(zr), np.zeros_like(zr)
    while n:
        if n & 1:
            pr, pi = pr * zr - pi * zi, pr * zi + pi * zr
        n >>= 1
        if n:
            zr, zi = zr * zr - zi * zi, 2.0 * zr * zi
    return pr * np.cos(phase) - pi * np.sin(phase)


def _to_canonical(x, y, f):
    """Image coordinates -> object coordinates (undo position, rotation and scale)."""
    c, s = np.cos(f["rotation"]), np.sin(f["rotation"])
    u = x - f["position_x"]
    v = y - f["position_y"]
    return (c * u + s * v) / f["scale"], (-s * u + c * v) / f["scale"]


def _to_image(xc, yc, f):
    """Object coordinates -> image coordinates (inverse of :func:`_to_canonical`)."""
    c, s = np.cos(f["rotation"]), np.sin(f["rotation"])
    xs, ys = xc * f["scale"], yc * f["scale"]
    return c * xs - s * ys + f["position_x"], s * xs + c * ys + f["position_y"]


# ----------------------------------------------------------------------------- scenes
# A scene maps image coordinates x, y (arrays broadcasting to N x P) and per-image
# factors (N x 1 arrays) to soft maps, each N x P: "intensity" on [0, 1], "support"
# (where noise is added), "texture" (where the tissue texture is added), "region"
# (tissue a lesion may cover) and "centre" (where a lesion may be centred).


def _brain_scene(x, y, f, w: float) -> dict[str, np.ndarray]:
    xc, yc = _to_canonical(x, y, f)
    w = w / f["scale"]
    a_h = 0.70 * f["aspect_ratio"]
    b_h = 0.86
    head = _inside(_ellipse_d(xc, yc, a_h, b_h), w)
    a_i = a_h - f["skull_thickness"]
    b_i = b_h - f["skull_thickness"]
    r_i = np.sqrt(a_i * b_i)
    xn, yn = xc / a_i, yc / b_i
    rho = np.sqrt(xn * xn + yn * yn)
    intra = _inside((rho - 1.0) * r_i, w)
    # cortical folding: sulci indent the brain surface, gyri carry white matter outwards
    gyri = _cos_multiple(xn, yn, rho, _N_GYRI, f["gyri_phase"])
    depth = f["gyri_depth"]
    paren = _inside((rho - (0.955 - 0.8 * depth * (0.5 - 0.5 * gyri))) * r_i, w)
    white = _inside((rho - (0.70 + depth * gyri)) * r_i, w)
    # interhemispheric fissure at the front and back
    fissure = _inside(np.abs(xc) - 0.012, w) * _inside(0.5 - np.abs(yn), 0.05)
    # two lateral ventricles, tilted like a butterfly
    vs = f["ventricle_size"]
    vent = 0.0
    for side in (-1.0, 1.0):
        dx = xc - side * 0.09 * vs
        dy = yc - (f["ventricle_offset"] - 0.02)
        ca, sa = math.cos(0.35), -side * math.sin(0.35)
        lx, ly = ca * dx + sa * dy, -sa * dx + ca * dy
        vent = np.maximum(vent, _inside(_ellipse_d(lx, ly, 0.055 * vs, 0.19 * vs), w))
    csf = f["csf_intensity"]
    img = f["skull_intensity"] * head
    img = _lerp(img, csf, intra)
    img = _lerp(img, f["grey_matter_intensity"], paren)
    img = _lerp(img, f["white_matter_intensity"], white * paren)
    img = _lerp(img, csf, 0.7 * fissure * paren)
    img = _lerp(img, csf, vent * intra)
    centre = paren * (1.0 - vent) * (rho < 0.85)
    return {"intensity": img, "support": head, "texture": paren, "region": paren, "centre": centre}


def _chest_scene(x, y, f, w: float) -> dict[str, np.ndarray]:
    xc, yc = _to_canonical(x, y, f)
    w = w / f["scale"]
    asp = f["aspect_ratio"]
    body = _inside(_ellipse_d(xc, yc - 0.22, 0.88 * asp, 1.15), w)
    lung_x = 0.34 * asp
    ax = np.abs(xc)
    dome = f["diaphragm_height"] + 0.18 * ((ax - lung_x) / 0.28) ** 2
    lung = _inside(_ellipse_d(ax - lung_x, yc + 0.08, 0.25 * asp, 0.58), w) * _inside(yc - dome, w)
    hs = f["heart_size"]
    heart = _inside(_ellipse_d(xc - 0.1 - f["heart_offset"], yc - 0.2, 0.3 * hs, 0.25 * hs), w)
    mediastinum = _inside(ax - 0.11, w) * _inside(yc - 0.1, w)
    spine = _inside(ax - 0.06, w)
    ribs = 0.5 + 0.5 * np.cos(2 * math.pi * (yc - 0.45 * xc * xc) / f["rib_spacing"])
    st = f["soft_tissue_intensity"]
    img = st * body
    img = _lerp(img, f["lung_intensity"] + f["rib_contrast"] * ribs**4, lung)
    img = _lerp(img, st + 0.12, spine * body)
    img = _lerp(img, st + 0.18, np.maximum(heart, mediastinum) * body)
    region = lung * (1.0 - heart) * (1.0 - mediastinum)
    return {"intensity": img, "support": body, "texture": body, "region": region, "centre": region}


@dataclass(frozen=True)
class _Variant:
    factors: tuple[Factor, ...]
    scene: Callable[..., dict[str, np.ndarray]]
    box: tuple[float, float, float, float]  # x0, x1, y0, y1 (object coordinates) of lesions
    rim: float  # the lesion's rim at rim * radius must lie in the lesion region
    description: str


_VARIANTS: dict[str, _Variant] = {
    "brain": _Variant(
        BRAIN_FACTORS,
        _brain_scene,
        (-0.62, 0.62, -0.78, 0.78),
        1.0,
        "brain-MRI-like axial slice (skull, cortex, white matter, ventricles)",
    ),
    "chest": _Variant(
        CHEST_FACTORS,
        _chest_scene,
        (-0.62, 0.62, -0.68, 0.45),
        0.5,
        "chest-X-ray-like frontal view (thorax, lungs, ribs, heart, spine)",
    ),
}


def factor_names(variant: str = "brain") -> list[str]:
    """The ordered factor names of a variant; ``intrinsic_dim=k`` varies the first k.

    >>> factor_names()[:4]
    ['position_x', 'position_y', 'scale', 'rotation']
    """
    if variant not in _VARIANTS:
        raise DataError(
            f"phantom: variant={variant!r} is not allowed; allowed: {', '.join(_VARIANTS)}"
        )
    return [fa.name for fa in _VARIANTS[variant].factors]


def factors_of(variant: str = "brain") -> tuple[Factor, ...]:
    """The ordered :class:`Factor` records (name, range, description) of a variant."""
    factor_names(variant)
    return _VARIANTS[variant].factors


# ----------------------------------------------------------------------------- params


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return (_is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(float(v))


def _range_param(name: str, value, lo: float, hi: float, lo_open: bool) -> tuple[float, float]:
    """A (low, high) pair (or one number, meaning low == high) with lo <(=) low <= high <= hi."""
    pair = (value, value) if _is_real(value) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(_is_real(p) for p in pair)
        or not float(pair[0]) <= float(pair[1]) <= hi
        or not (lo < float(pair[0]) if lo_open else lo <= float(pair[0]))
    ):
        raise DataError(
            f"phantom: {name}={value!r} is not allowed; expected a number or a pair "
            f"(low, high) with {lo} {'<' if lo_open else '<='} low <= high <= {hi}"
        )
    return float(pair[0]), float(pair[1])


@dataclass(frozen=True)
class PhantomParams:
    """Generation parameters of the phantom (see the module docstring).

    ``texture_sigma`` is in pixels at 64 x 64 and ``lesion_radius`` in pixels at
    32 x 32; both scale with ``image_size``. ``texture``, ``noise`` and
    ``lesion_contrast`` are amplitudes on the [0, 1] intensity scale.

    >>> PhantomParams(image_size=64).validated().lesion_radius
    (2.0, 4.0)
    """

    image_size: int = 32
    n_train: int = 1000
    n_val: int = 200
    n_test_normal: int = 500
    n_test_abnormal: int = 500
    intrinsic_dim: int = 6
    n_val_abnormal: int = 0
    texture: float = 0.08
    texture_sigma: float = 1.5
    noise: float = 0.02
    lesion_radius: tuple[float, float] = (2.0, 4.0)
    lesion_contrast: tuple[float, float] = _LESION_CONTRAST_DEFAULT
    variant: str = "brain"
    seed: int = 0
    texture_rank: int | None = None
    noise_sigma: float = 0.0

    @property
    def known_dim(self) -> int | None:
        """The dimension of the manifold the normal images lie on, up to pixel noise:
        ``intrinsic_dim + texture_rank`` with a finite texture (``intrinsic_dim`` when
        ``texture`` is 0); None for the default texture, a field of unbounded dimension.

        >>> PhantomParams(intrinsic_dim=4, texture_rank=8).known_dim
        12
        >>> PhantomParams().known_dim is None, PhantomParams(texture=0.0).known_dim
        (True, 6)
        """
        if float(self.texture) == 0.0:
            return int(self.intrinsic_dim)
        if self.texture_rank is None:
            return None
        return int(self.intrinsic_dim) + int(self.texture_rank)

    def validated(self) -> PhantomParams:
        """Check every value; return a copy with normalised types or raise DataError."""

        def bad(name: str, allowed: str) -> DataError:
            return DataError(
                f"phantom: {name}={getattr(self, name)!r} is not allowed; {name} must be {allowed}"
            )

        if not isinstance(self.variant, str) or self.variant not in _VARIANTS:
            raise bad("variant", f"one of {', '.join(repr(v) for v in _VARIANTS)}")
        n_factors = len(_VARIANTS[self.variant].factors)
        if not _is_int(self.image_size) or not 16 <= self.image_size <= 512:
            raise bad("image_size", "an int in 16..512")
        if not _is_int(self.n_train) or self.n_train < 1:
            raise bad("n_train", "an int >= 1")
        for name in ("n_val", "n_val_abnormal", "n_test_normal", "n_test_abnormal"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "an int >= 0")
        if self.n_test_normal + self.n_test_abnormal < 1:
            raise bad("n_test_abnormal", "an int such that n_test_normal + n_test_abnormal >= 1")
        if not _is_int(self.intrinsic_dim) or not 0 <= self.intrinsic_dim <= n_factors:
            raise bad(
                "intrinsic_dim",
                f"an int in 0..{n_factors} (the number of factors of variant {self.variant!r})",
            )
        for name, hi in (("texture", 1.0), ("noise", 1.0)):
            v = getattr(self, name)
            if not _is_real(v) or not 0.0 <= float(v) <= hi:
                raise bad(name, f"a number in [0, {hi}]")
        if not _is_real(self.texture_sigma) or not 0.0 < float(self.texture_sigma) <= 32.0:
            raise bad("texture_sigma", "a number in (0, 32] (pixels at 64 x 64)")
        if not _is_real(self.noise_sigma) or not 0.0 <= float(self.noise_sigma) <= 32.0:
            raise bad("noise_sigma", "a number in [0, 32] (pixels at 64 x 64; 0: white noise)")
        rank = self.texture_rank
        if rank is not None and (not _is_int(rank) or not 0 <= rank <= MAX_TEXTURE_RANK):
            raise bad(
                "texture_rank",
                f"null (a texture of unbounded dimension) or an int in 0..{MAX_TEXTURE_RANK}",
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an int >= 0")
        return PhantomParams(
            image_size=int(self.image_size),
            n_train=int(self.n_train),
            n_val=int(self.n_val),
            n_val_abnormal=int(self.n_val_abnormal),
            n_test_normal=int(self.n_test_normal),
            n_test_abnormal=int(self.n_test_abnormal),
            intrinsic_dim=int(self.intrinsic_dim),
            texture=float(self.texture),
            texture_sigma=float(self.texture_sigma),
            noise=float(self.noise),
            lesion_radius=_range_param("lesion_radius", self.lesion_radius, 1.0, 8.0, False),
            lesion_contrast=_range_param("lesion_contrast", self.lesion_contrast, 0.0, 1.0, True),
            variant=self.variant,
            seed=int(self.seed),
            texture_rank=None if rank is None else int(rank),
            noise_sigma=float(self.noise_sigma),
        )


# ----------------------------------------------------------------------------- generation


@dataclass
class PhantomImages:
    """One generated split.

    - ``images``: N x 1 x S x S float32 in [-1, 1].
    - ``masks``: N x 1 x S x S float32 in {0, 1} (all zero without lesions).
    - ``region``: N x 1 x S x S bool, the tissue a lesion may cover (brain
      parenchyma, or the lung fields for ``variant="chest"``).
    - ``factors``: N x F float64, the factor values used (fixed ones included).
    """

    images: torch.Tensor
    masks: torch.Tensor
    region: torch.Tensor
    factors: np.ndarray


def _rng(seed: int, split: str, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_IDS[split], stream])


def _draw_factors(n: int, p: PhantomParams, split: str) -> np.ndarray:
    factors = _VARIANTS[p.variant].factors
    low = np.array([fa.low for fa in factors])
    high = np.array([fa.high for fa in factors])
    u = _rng(p.seed, split, _STREAM_FACTORS).random((n, len(factors)))
    values = low + u * (high - low)
    values[:, p.intrinsic_dim :] = [fa.fixed for fa in factors[p.intrinsic_dim :]]
    return values


def _factor_dict(values: np.ndarray, variant: str) -> dict[str, np.ndarray]:
    cols = values.astype(np.float32)
    return {fa.name: cols[:, i : i + 1] for i, fa in enumerate(_VARIANTS[variant].factors)}


def _draw_lesions(
    factors: np.ndarray, p: PhantomParams, split: str, w: float
) -> dict[str, np.ndarray]:
    """Per image: lesion centre x, y and radius (image units) and signed contrast.

    Of ``_N_CANDIDATES`` candidate centres, the first whose centre lies in tissue and
    whose rim (8 points at the radius, or half of it for the narrower lung fields) lies
    inside the lesion region is used; if none qualifies, the candidate that comes
    closest.
    """
    n = len(factors)
    var = _VARIANTS[p.variant]
    # one row of uniforms per image, so image i does not depend on how many are drawn
    u = _rng(p.seed, split, _STREAM_LESION).random((n, 3 + 2 * _N_CANDIDATES))
    (r_lo, r_hi), (c_lo, c_hi) = p.lesion_radius, p.lesion_contrast
    radius = (r_lo + u[:, 0] * (r_hi - r_lo)) / 16.0  # pixels at 32 x 32 -> image units
    contrast = (c_lo + u[:, 1] * (c_hi - c_lo)) * np.where(u[:, 2] < 0.5, -1.0, 1.0)
    x0, x1, y0, y1 = var.box
    cand = u[:, 3:].reshape(n, _N_CANDIDATES, 2) * [x1 - x0, y1 - y0] + [x0, y0]
    f = _factor_dict(factors, p.variant)
    f64 = {k: v.astype(np.float64) for k, v in f.items()}
    cx, cy = _to_image(cand[..., 0], cand[..., 1], f64)  # N x C
    # the centre must lie in tissue, and 8 points on the lesion's rim inside the region
    ang = np.linspace(0.0, 2 * math.pi, 8, endpoint=False)
    rim_radius = var.rim * radius[:, None, None]
    rx = cx[..., None] + rim_radius * np.cos(ang)
    ry = cy[..., None] + rim_radius * np.sin(ang)
    centre_ok = var.scene(cx, cy, f, w)["centre"]
    m = 8 * _N_CANDIDATES
    rim = var.scene(rx.reshape(n, m), ry.reshape(n, m), f, w)["region"]
    rim_ok = rim.reshape(n, _N_CANDIDATES, 8).min(axis=-1)
    score = np.minimum(centre_ok, rim_ok)
    valid = score > 0.5
    pick = np.where(valid.any(axis=1), valid.argmax(axis=1), score.argmax(axis=1))
    rows = np.arange(n)
    return {
        "x": cx[rows, pick],
        "y": cy[rows, pick],
        "radius": radius,
        "contrast": contrast,
    }


def texture_modes(rank: int) -> list[tuple[int, int]]:
    """The frequencies (p, q) of the first ``rank`` modes of a finite texture, in order:
    by total frequency p + q, then by q. Mode (p, q) is ``c(p, u) * c(q, v)`` with
    ``c(p, u) = cos(pi * p * u)`` (times sqrt 2 for p > 0, so that each mode has unit
    mean square on [0, 1]^2), where u, v map the object coordinates x, y of the box
    in which lesions are placed (the tissue's extent) onto [0, 1]: the texture moves
    with the head. The constant mode (0, 0) is left out.

    >>> texture_modes(5)
    [(1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    """
    out = [(n - q, q) for n in range(1, 2 * MAX_TEXTURE_RANK) for q in range(n + 1)]
    return out[:rank]


def _mode_texture(f: dict[str, np.ndarray], grid, coeffs: np.ndarray, variant: str) -> np.ndarray:
    """The finite texture ``sum_j coeffs[:, j] * mode_j`` (N x P) in object coordinates."""
    xc, yc = _to_canonical(grid[0], grid[1], f)
    x0, x1, y0, y1 = _VARIANTS[variant].box
    u, v = (xc - x0) / (x1 - x0), (yc - y0) / (y1 - y0)
    modes = texture_modes(coeffs.shape[1])
    top = max((max(m) for m in modes), default=0)
    root2 = np.float32(math.sqrt(2.0))
    cu = [np.ones_like(u)] + [
        root2 * np.cos(np.float32(math.pi * k) * u) for k in range(1, top + 1)
    ]
    cv = [np.ones_like(v)] + [
        root2 * np.cos(np.float32(math.pi * k) * v) for k in range(1, top + 1)
    ]
    field = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=np.float32)
    for j, (a, b) in enumerate(modes):
        field += coeffs[:, j : j + 1] * (cu[a] * cv[b])
    return field


def _render_chunk(
    f: dict[str, np.ndarray],
    grid: tuple[np.ndarray, np.ndarray],
    texture_field: np.ndarray,
    noise_field: np.ndarray,
    lesions: dict[str, np.ndarray] | None,
    p: PhantomParams,
    w: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = grid
    scene = _VARIANTS[p.variant].scene(x, y, f, w)
    img = scene["intensity"]
    region = scene["region"]
    mask = np.zeros_like(img, dtype=bool)
    if lesions is not None:
        lx, ly, r, contrast = (
            lesions[k][:, None].astype(np.float32) for k in ("x", "y", "radius", "contrast")
        )
        d = np.sqrt((x - lx) ** 2 + (y - ly) ** 2)
        half = 0.35 * r + np.float32(1.0 / p.image_size)  # soft edge: 0.35 r + half a pixel
        profile = _inside(d - r, half) * region
        img = img + contrast * profile
        mask = profile > 0.5
    img = (
        img
        + p.texture * texture_field * scene["texture"]
        + p.noise * noise_field * scene["support"]
    )
    img = np.clip(img, 0.0, 1.0) * 2.0 - 1.0
    return img.astype(np.float32), mask, region > 0.5


def _smoothed(white: np.ndarray, sigma: float) -> np.ndarray:
    """White noise (N x S x S) smoothed per image by a Gaussian of ``sigma`` pixels and
    normalised to unit standard deviation per image."""
    n, s = white.shape[0], white.shape[1]
    out = gaussian_filter(white, sigma=(0.0, sigma, sigma), mode="reflect", truncate=3.0)
    out /= np.maximum(out.reshape(n, s * s).std(axis=1), 1e-12)[:, None, None]
    return out


def generate_images(
    n: int, split: str, params: PhantomParams | None = None, lesions: bool = False
) -> PhantomImages:
    """Generate ``n`` images of one split's random streams, with or without lesions.

    ``split`` is one of "train", "val", "test_normal", "test_abnormal"; the loader uses
    ``lesions=True`` for "test_abnormal" only. With the same split and params, the
    images with and without lesions are the same normal images, differing only near
    the masks.

    >>> p = PhantomParams(n_train=4)
    >>> a = generate_images(4, "train", p)
    >>> b = generate_images(4, "train", p, lesions=True)
    >>> int(a.masks.sum()), int(b.masks.sum()) > 0, bool((a.images == b.images).all())
    (0, True, False)
    """
    p = (params or PhantomParams()).validated()
    if split not in _SPLIT_IDS:
        raise DataError(
            f"phantom: split={split!r} is not allowed; allowed: {', '.join(_SPLIT_IDS)}"
        )
    if not _is_int(n) or n < 0:
        raise DataError(f"phantom: n={n!r} is not allowed; n must be an int >= 0")
    s = p.image_size
    factors = _draw_factors(n, p, split)
    if p.texture_rank is None:
        tex = _rng(p.seed, split, _STREAM_TEXTURE).standard_normal((n, s, s), dtype=np.float32)
        tex = _smoothed(tex, p.texture_sigma * s / 64.0)
    else:
        # standard normal coefficients of the first texture_rank modes (a row of
        # MAX_TEXTURE_RANK per image, so a larger rank only adds modes to the same images)
        z = _rng(p.seed, split, _STREAM_TEXTURE).standard_normal((n, MAX_TEXTURE_RANK))
        coeffs = z[:, : p.texture_rank].astype(np.float32)
    noise = _rng(p.seed, split, _STREAM_NOISE).standard_normal((n, s, s), dtype=np.float32)
    if p.noise_sigma > 0:
        noise = _smoothed(noise, p.noise_sigma * s / 64.0)
    w = 0.6 * 2.0 / s  # soft-edge half-width: 0.6 pixel
    les = _draw_lesions(factors, p, split, w) if lesions else None
    coords = ((np.arange(s, dtype=np.float32) + 0.5) * (2.0 / s) - 1.0).astype(np.float32)
    gy, gx = np.meshgrid(coords, coords, indexing="ij")
    grid = (gx.reshape(1, -1), gy.reshape(1, -1))
    images = np.empty((n, s * s), dtype=np.float32)
    masks = np.empty((n, s * s), dtype=bool)
    region = np.empty((n, s * s), dtype=bool)
    chunk = max(1, _CHUNK_PIXELS // (s * s))
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        f = _factor_dict(factors[sl], p.variant)
        les_chunk = None if les is None else {k: v[sl] for k, v in les.items()}
        if p.texture_rank is None:
            tex_chunk = tex[sl].reshape(-1, s * s)
        else:
            tex_chunk = _mode_texture(f, grid, coeffs[sl], p.variant)
        images[sl], masks[sl], region[sl] = _render_chunk(
            f,
            grid,
            tex_chunk,
            noise[sl].reshape(-1, s * s),
            les_chunk,
            p,
            w,
        )
    shape = (n, 1, s, s)
    return PhantomImages(
        images=torch.from_numpy(images.reshape(shape)),
        masks=torch.from_numpy(masks.reshape(shape).astype(np.float32)),
        region=torch.from_numpy(region.reshape(shape)),
        factors=factors,
    )


@register_source("phantom")
def load_phantom(
    image_size: int = 32,
    n_train: int = 1000,
    n_val: int = 200,
    n_test_normal: int = 500,
    n_test_abnormal: int = 500,
    intrinsic_dim: int = 6,
    n_val_abnormal: int = 0,
    texture: float = 0.08,
    texture_sigma: float = 1.5,
    noise: float = 0.02,
    lesion_radius: tuple[float, float] = (2.0, 4.0),
    lesion_contrast: tuple[float, float] = _LESION_CONTRAST_DEFAULT,
    variant: str = "brain",
    seed: int = 0,
    texture_rank: int | None = None,
    noise_sigma: float = 0.0,
    **unknown,
) -> AnomalyDataset:
    """Generate the phantom data set (deterministic in ``seed``); see the module docstring.

    >>> ds = load_phantom(n_train=4, n_val=0, n_test_normal=2, n_test_abnormal=2)
    >>> ds.summary()["n_test_abnormal"], ds.val is None
    (2, True)
    """
    if unknown:
        allowed = ", ".join(f.name for f in PhantomParams.__dataclass_fields__.values())
        raise DataError(
            f"phantom: unknown parameter(s) {', '.join(sorted(unknown))}; allowed: {allowed}"
        )
    p = PhantomParams(
        image_size=image_size,
        n_train=n_train,
        n_val=n_val,
        n_test_normal=n_test_normal,
        n_test_abnormal=n_test_abnormal,
        intrinsic_dim=intrinsic_dim,
        n_val_abnormal=n_val_abnormal,
        texture=texture,
        texture_sigma=texture_sigma,
        noise=noise,
        lesion_radius=lesion_radius,
        lesion_contrast=lesion_contrast,
        variant=variant,
        seed=seed,
        texture_rank=texture_rank,
        noise_sigma=noise_sigma,
    ).validated()
    train = generate_images(p.n_train, "train", p)
    val = generate_images(p.n_val, "val", p) if p.n_val > 0 else None
    val_abnormal = (
        generate_images(p.n_val_abnormal, "val_abnormal", p, lesions=True)
        if p.n_val_abnormal > 0
        else None
    )
    normal = generate_images(p.n_test_normal, "test_normal", p)
    abnormal = generate_images(p.n_test_abnormal, "test_abnormal", p, lesions=True)
    test = torch.cat([normal.images, abnormal.images])
    labels = torch.cat(
        [
            torch.zeros(p.n_test_normal, dtype=torch.long),
            torch.ones(p.n_test_abnormal, dtype=torch.long),
        ]
    )
    var = _VARIANTS[p.variant]
    return AnomalyDataset(
        name="phantom" if p.variant == "brain" else f"phantom-{p.variant}",
        description=(
            f"synthetic {var.description}, {p.image_size}x{p.image_size}, "
            f"{p.intrinsic_dim} of {len(var.factors)} factors varied, lesions in test only, "
            f"seed {p.seed}"
        ),
        train=train.images,
        test=test,
        test_labels=labels,
        test_masks=torch.cat([normal.masks, abnormal.masks]),
        **_val_split(val, val_abnormal),
        info=_info(p, val_abnormal is not None),
    )


def _info(p: PhantomParams, val_abnormal: bool) -> dict:
    """The data set's ``info``: the factors, the parameters and the order of the splits."""
    var = _VARIANTS[p.variant]
    names = [fa.name for fa in var.factors]
    return {
        "variant": p.variant,
        "factor_names": names,
        "n_factors": len(names),
        "intrinsic_dim": p.intrinsic_dim,
        "texture_rank": p.texture_rank,
        "known_dim": p.known_dim,
        "varied_factors": names[: p.intrinsic_dim],
        "fixed_factors": {fa.name: fa.fixed for fa in var.factors[p.intrinsic_dim :]},
        "factor_ranges": {fa.name: [fa.low, fa.high] for fa in var.factors},
        "params": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(p).items()},
        "intensity_scale": "[0, 1] internally, returned as 2 * I - 1 (background -1)",
        "test_order": "n_test_normal normal images, then n_test_abnormal abnormal ones",
        "val_masks": "n_val normal images (all-zero masks), then n_val_abnormal abnormal ones"
        if val_abnormal
        else "None: the validation split is normal only",
    }


def _val_split(normal: PhantomImages | None, abnormal: PhantomImages | None) -> dict:
    """The validation split's fields of the data set: normal images, then abnormal ones
    with their masks (labels and masks only when there are abnormal ones)."""
    if abnormal is None:
        return dict(
            val=None if normal is None else normal.images,
            val_labels=None
            if normal is None
            else torch.zeros(len(normal.images), dtype=torch.long),
            val_masks=None,
        )
    parts = [abnormal] if normal is None else [normal, abnormal]
    labels = [torch.full((len(x.images),), int(x is abnormal), dtype=torch.long) for x in parts]
    return dict(
        val=torch.cat([x.images for x in parts]),
        val_labels=torch.cat(labels),
        val_masks=torch.cat([x.masks for x in parts]),
    )
