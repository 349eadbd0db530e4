"""Traditional distortions of SPEC S2 on grayscale chest X-rays.

Every distortion is a function ``fn(image, severity, rng) -> (distorted, params)``:

* ``image``: float ``(H, W)`` array in ``[0, 1]`` (a gray CXR);
* ``severity``: float in ``[0, 1]``; ``0`` returns the image unchanged (up to
  float rounding for JPEG), larger is stronger; each function maps it onto its own
  physical parameter (a sigma, a JPEG quality, a shift in pixels ...);
* ``rng``: a ``numpy.random.Generator`` for the random parts (noise, direction);
* ``params``: a JSON-serialisable dict of the parameters actually used, so a
  test-set manifest can record and reproduce every image.

The set follows the "traditional" distortions of BAPPS (Zhang et al. 2018, "The
Unreasonable Effectiveness of Deep Features as a Perceptual Metric", Sec. 2.1),
reduced to gray: colour-only operations (saturation, hue, colour noise) have no
meaning on a one-channel radiograph, so "coloured noise" here means the noise
colour of acoustics (power spectrum ~ f^beta, violet +2 ... brown -2) and
chromatic aberration is simulated on three copies of the image then reduced to gray.

OpenCV does the geometry, filtering and JPEG (``cv2.warpAffine``,
``warpPerspective``, ``remap``, ``GaussianBlur``, ``bilateralFilter``,
``imencode``): it is exact, fast and already a dependency of albumentations.
albumentations' own transforms are not used because they draw their parameters
internally from ranges; here the severity -> parameter map must be explicit and
recorded in the manifest. Spectrally shaped noise has no library implementation
in TF/scipy/cv2/albumentations (albumentations' GaussNoise is white only), so it is
made here with ``numpy.fft``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from cxr_tf.errors import CXRConfigError, CXRInputError


def _cv2():
    from cxr_tf.errors import require_optional

    return require_optional("cv2", "perceptual", "cxr_tf.distortions", "opencv-python-headless")


def check_image(image) -> np.ndarray:
    """A float32 ``(H, W)`` array in ``[0, 1]``, or a CXRInputError saying why not."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise CXRInputError(None, f"distortions take one gray image (H, W); received shape {a.shape}")
    a = a.astype(np.float32)
    if a.size == 0 or not np.isfinite(a).all():
        raise CXRInputError(None, "image is empty or holds NaN/inf values")
    if a.min() < -1e-6 or a.max() > 1 + 1e-6:
        raise CXRInputError(None, f"image values must be in [0, 1]; received [{a.min():.3g}, {a.max():.3g}]")
    return np.clip(a, 0.0, 1.0)


def check_severity(severity) -> float:
    s = float(severity)
    if not 0.0 <= s <= 1.0:
        raise CXRConfigError(f"severity must be in [0, 1]; received severity={severity}")
    return s


# ---------------------------------------------------------------- photometric
def lightness(img, s, rng):
    """Add a constant offset of +-0.4*s (sign random)."""
    delta = float(rng.choice([-1.0, 1.0]) * 0.4 * s)
    return np.clip(img + delta, 0, 1), {"delta": delta}


def contrast(img, s, rng):
    """Scale deviations from the mean by ``1 - 0.9*s`` (lower contrast) or ``1 + 2*s``."""
    lower = bool(rng.random() < 0.5)
    factor = float(1.0 - 0.9 * s) if lower else float(1.0 + 2.0 * s)
    m = float(img.mean())
    return np.clip(m + (img - m) * factor, 0, 1), {"factor": factor}


def gamma(img, s, rng):
    """Gamma curve ``img ** g`` with ``log2 g = +-1.5*s``."""
    g = float(2.0 ** (rng.choice([-1.0, 1.0]) * 1.5 * s))
    return np.clip(img, 0, 1) ** g, {"gamma": g}


# ---------------------------------------------------------------------- noise
def spectral_noise(shape, beta: float, rng) -> np.ndarray:
    """Zero-mean, unit-std noise whose power spectrum goes as ``f**beta``.

    ``beta`` 0 white, -1 pink, -2 brown (red), +1 blue, +2 violet. Made by shaping the
    amplitude spectrum of white Gaussian noise by ``f**(beta/2)`` (DC set to 0).
    """
    h, w = shape
    white = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = np.fft.rfft2(white) * f ** (beta / 2.0)
    spec[0, 0] = 0.0
    n = np.fft.irfft2(spec, s=(h, w))
    return (n / (n.std() + 1e-12)).astype(np.float32)


def _add_noise(img, noise, amp):
    return np.clip(img + amp * noise, 0, 1)


def white_uniform_noise(img, s, rng):
    """Uniform white noise in ``[-a, a]``, ``a = 0.35*s``."""
    a = 0.35 * s
    return np.clip(img + rng.uniform(-a, a, img.shape), 0, 1).astype(np.float32), {"amplitude": a}


def white_gaussian_noise(img, s, rng):
    """Gaussian white noise, sigma ``0.2*s``."""
    sigma = 0.2 * s
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 1).astype(np.float32), {"sigma": sigma}


def pink_noise(img, s, rng):
    """1/f noise (power spectrum slope -1), std ``0.2*s``."""
    sigma = 0.2 * s
    return _add_noise(img, spectral_noise(img.shape, -1.0, rng), sigma), {"sigma": sigma, "beta": -1.0}


def blue_noise(img, s, rng):
    """f noise (power spectrum slope +1), std ``0.2*s``."""
    sigma = 0.2 * s
    return _add_noise(img, spectral_noise(img.shape, 1.0, rng), sigma), {"sigma": sigma, "beta": 1.0}


def coloured_noise(img, s, rng):
    """Noise of a random colour ``beta`` in [-2 (brown), +2 (violet)], std ``0.2*s``."""
    beta = float(rng.uniform(-2.0, 2.0))
    sigma = 0.2 * s
    return _add_noise(img, spectral_noise(img.shape, beta, rng), sigma), {"sigma": sigma, "beta": beta}


def checkerboard(img, s, rng):
    """Checkerboard artifact (as left by strided transposed convolutions): a +-1 pattern
    of random cell size 1-4 px times amplitude ``0.15*s``, added to the image."""
    cell = int(rng.integers(1, 5))
    amp = 0.15 * s
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    pattern = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 1.0, -1.0)
    return np.clip(img + amp * pattern, 0, 1).astype(np.float32), {"amplitude": amp, "cell": cell}


# ----------------------------------------------------------------------- blur
def gaussian_blur(img, s, rng):
    """Gaussian blur, sigma ``3*s`` px (kernel from sigma)."""
    sigma = 3.0 * s
    if sigma <= 0:
        return img.copy(), {"sigma": 0.0}
    return _cv2().GaussianBlur(img, (0, 0), sigmaX=sigma, borderType=4), {"sigma": sigma}


def bilateral_blur(img, s, rng):
    """Edge-preserving bilateral filter: space sigma ``0.5+4.5*s`` px, range sigma
    ``0.02+0.3*s`` (intensity units), applied twice at high severity."""
    if s <= 0:
        return img.copy(), {"sigma_space": 0.0, "sigma_color": 0.0, "passes": 0}
    sig_s, sig_c = 0.5 + 4.5 * s, 0.02 + 0.3 * s
    passes = 1 + int(s > 0.5)
    out = img.astype(np.float32)
    for _ in range(passes):
        out = _cv2().bilateralFilter(out, d=-1, sigmaColor=sig_c, sigmaSpace=sig_s)
    return np.clip(out, 0, 1), {"sigma_space": sig_s, "sigma_color": sig_c, "passes": passes}


# -------------------------------------------------------------------- spatial
def _warp_affine(img, m):
    cv2 = _cv2()
    h, w = img.shape
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def shift(img, s, rng):
    """Translate by up to ``0.15*s`` of the side, random direction (reflected border)."""
    h, w = img.shape
    ang = rng.uniform(0, 2 * np.pi)
    r = 0.15 * s * min(h, w)
    dx, dy = float(r * np.cos(ang)), float(r * np.sin(ang))
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return _warp_affine(img, m), {"dx": dx, "dy": dy}


def affine_matrix(shape, rotation_deg, scale, shear_deg):
    """2x3 matrix: rotate/scale about the centre, then shear along x."""
    cv2 = _cv2()
    h, w = shape
    c = ((w - 1) / 2.0, (h - 1) / 2.0)
    m = np.vstack([cv2.getRotationMatrix2D(c, rotation_deg, scale), [0, 0, 1]])
    sh = np.tan(np.deg2rad(shear_deg))
    shm = np.array([[1, sh, -sh * c[1]], [0, 1, 0], [0, 0, 1]])
    return (shm @ m)[:2].astype(np.float32)


def affine(img, s, rng):
    """Random rotation (+-20*s deg), scale (1 +- 0.2*s) and shear (+-15*s deg) about the centre."""
    rot = float(rng.uniform(-1, 1) * 20 * s)
    scale = float(1 + rng.uniform(-1, 1) * 0.2 * s)
    shear = float(rng.uniform(-1, 1) * 15 * s)
    m = affine_matrix(img.shape, rot, scale, shear)
    return _warp_affine(img, m), {"rotation_deg": rot, "scale": scale, "shear_deg": shear, "matrix": m.tolist()}


def homography(img, s, rng):
    """Projective warp: each corner moved by up to ``0.12*s`` of the side."""
    cv2 = _cv2()
    h, w = img.shape
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    dst = (src + rng.uniform(-1, 1, (4, 2)) * 0.12 * s * np.float32([w, h])).astype(np.float32)
    hm = cv2.getPerspectiveTransform(src, dst)
    out = cv2.warpPerspective(img, hm, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return out, {"matrix": hm.tolist()}


def displacement_field(shape, grid: int, max_disp: float, order: int, rng) -> np.ndarray:
    """A smooth random (2, H, W) displacement field: random vectors on a ``grid x grid``
    lattice, interpolated to full size by ``scipy.ndimage.zoom`` with spline ``order``
    (1 linear: piecewise-linear field; 3 cubic: C2-smooth field)."""
    from scipy import ndimage

    h, w = shape
    knots = rng.uniform(-1, 1, (2, grid, grid)) * max_disp
    field = np.stack([ndimage.zoom(k, (h / grid, w / grid), order=order, mode="nearest", grid_mode=True)
                      for k in knots])
    return field[:, :h, :w]


def _remap(img, field):
    cv2 = _cv2()
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(img, xx + field[0].astype(np.float32), yy + field[1].astype(np.float32),
                     interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def linear_warp(img, s, rng):
    """Elastic warp, 4x4 knots, piecewise-linear field, up to ``0.06*s`` of the side."""
    md = 0.06 * s * min(img.shape)
    return _remap(img, displacement_field(img.shape, 4, md, 1, rng)), {"grid": 4, "max_disp_px": md, "order": 1}


def cubic_warp(img, s, rng):
    """Elastic warp, 4x4 knots, cubic-spline field, up to ``0.06*s`` of the side."""
    md = 0.06 * s * min(img.shape)
    return _remap(img, displacement_field(img.shape, 4, md, 3, rng)), {"grid": 4, "max_disp_px": md, "order": 3}


def ghosting(img, s, rng):
    """A shifted faint copy: ``(1-a)*img + a*shift(img, d)``, ``a = 0.4*s``, ``|d|`` 3-10% of the side."""
    h, w = img.shape
    a = 0.4 * s
    ang = rng.uniform(0, 2 * np.pi)
    r = rng.uniform(0.03, 0.10) * min(h, w)
    dx, dy = float(r * np.cos(ang)), float(r * np.sin(ang))
    ghost = _warp_affine(img, np.float32([[1, 0, dx], [0, 1, dy]]))
    return np.clip((1 - a) * img + a * ghost, 0, 1), {"alpha": a, "dx": dx, "dy": dy}


def chromatic_aberration(img, s, rng):
    """Lateral chromatic aberration reduced to gray: the R and B copies are magnified by
    ``1 +- 0.08*s`` about the centre (G unchanged), then averaged with luminance
    weights. The centre stays sharp; blur grows with the distance from it."""
    k = 0.08 * s
    h, w = img.shape
    c = ((w - 1) / 2.0, (h - 1) / 2.0)
    cv2 = _cv2()
    r = _warp_affine(img, cv2.getRotationMatrix2D(c, 0.0, 1 + k))
    b = _warp_affine(img, cv2.getRotationMatrix2D(c, 0.0, 1 - k))
    return np.clip(0.299 * r + 0.587 * img + 0.114 * b, 0, 1), {"scale_r": 1 + k, "scale_b": 1 - k}


# ----------------------------------------------------------------- compression
def jpeg_quality(s: float) -> int:
    """Severity -> JPEG quality: 0 -> 100, 1 -> 2 (linear, rounded)."""
    return int(round(100 - 98 * s))


def jpeg(img, s, rng):
    """JPEG round trip at quality ``100 - 98*s`` (OpenCV, 8-bit)."""
    cv2 = _cv2()
    q = jpeg_quality(s)
    u8 = np.round(img * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:  # pragma: no cover
        raise CXRInputError(None, "OpenCV could not JPEG-encode the image")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0, {"quality": q}


# ------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Distortion:
    """A registered distortion: ``apply(image, severity, seed_or_rng) -> (image, params)``."""

    name: str
    family: str
    fn: Callable

    def apply(self, image, severity: float, rng=None):
        img = check_image(image)
        s = check_severity(severity)
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        out, params = self.fn(img, s, rng)
        return np.clip(np.asarray(out, np.float32), 0, 1), {k: _jsonable(v) for k, v in params.items()}


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


TRADITIONAL = {
    d.name: d
    for d in [
        Distortion("lightness", "photometric", lightness),
        Distortion("contrast", "photometric", contrast),
        Distortion("gamma", "photometric", gamma),
        Distortion("white_uniform_noise", "noise", white_uniform_noise),
        Distortion("white_gaussian_noise", "noise", white_gaussian_noise),
        Distortion("pink_noise", "noise", pink_noise),
        Distortion("blue_noise", "noise", blue_noise),
        Distortion("coloured_noise", "noise", coloured_noise),
        Distortion("checkerboard", "noise", checkerboard),
        Distortion("gaussian_blur", "blur", gaussian_blur),
        Distortion("bilateral_blur", "blur", bilateral_blur),
        Distortion("shift", "spatial", shift),
        Distortion("affine", "spatial", affine),
        Distortion("homography", "spatial", homography),
        Distortion("linear_warp", "spatial", linear_warp),
        Distortion("cubic_warp", "spatial", cubic_warp),
        Distortion("ghosting", "spatial", ghosting),
        Distortion("chromatic_aberration", "spatial", chromatic_aberration),
        Distortion("jpeg", "compression", jpeg),
    ]
}
