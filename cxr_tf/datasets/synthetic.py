"""Deterministic synthetic chest radiographs: the embedded default dataset.

No data can be downloaded where this project runs, so the default experiment and
the fast tests train on images drawn here. Each image is a frontal (PA) chest film
rendered from simple anatomy -- soft-tissue body, dark lung fields, mediastinum and
spine, trachea, heart shadow, diaphragm domes, gastric bubble, posterior/anterior
ribs, clavicles, hila and vessels -- with per-patient variation, exposure/gamma
changes, film grain, an illumination gradient and occasional burnt-in side markers.
Three findings follow the Kermany pneumonia data set (bacterial / viral / normal):

* bacterial: one or two dense, lobulated, soft-edged consolidations in the
  central/lower zones of one lung (sometimes with a sharp fissure border), now and
  then with some patchy spread;
* viral: diffuse, bilateral, perihilar, patchy reticular haze, now and then with a
  small focal opacity;
* normal: clear lungs (vascular markings only).

Severity varies per image. ``difficulty`` lowers lesion contrast and raises noise.
At ``1.0`` a linear model on raw pixels is well above chance but far from perfect
(a small CNN does much better), bacterial vs viral being the pair a linear model
confuses most, as in real data. Several images of one patient share anatomy and
class, so patient-level splits matter.

Example::

    ds = make_synthetic_cxr(n=600, image_size=224, seed=0)
    ds, masks = make_synthetic_cxr(n=60, return_masks=True)   # lung/lesion masks
    write_synthetic_folder("/tmp/synth", n=60, image_size=128)  # PNG + labels.csv
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from cxr_tf.datasets.contract import CXRDataset
from cxr_tf.errors import CXRConfigError

__all__ = [
    "DEFAULT_CLASSES",
    "KERMANY_CLASS_WEIGHTS",
    "make_synthetic_cxr",
    "write_synthetic_folder",
    "preview_grid",
    "save_preview",
]

DEFAULT_CLASSES = ("bacterial", "viral", "normal")
#: Image counts of the Kermany (2018) release: bacterial 2780, viral 1493, normal 1583.
KERMANY_CLASS_WEIGHTS = {"bacterial": 2780, "viral": 1493, "normal": 1583}

_PATIENT_KEY = 0  # rng stream index for per-patient parameters (images use 1, 2, ...)


# --------------------------------------------------------------------------- helpers
def _soft(z: np.ndarray) -> np.ndarray:
    """Soft step 0 -> 1 over z in [-2, 2] (a smoothstep: sigmoid-like, far cheaper than tanh)."""
    t = z * 0.25
    t += 0.5
    np.clip(t, 0.0, 1.0, out=t)
    r = t * t
    t *= -2.0
    t += 3.0
    r *= t
    return r


def _kind_of(name: str) -> str:
    """Finding drawn for a class name (``bacterial``/``viral``/``normal``/``pneumonia``)."""
    n = name.lower()
    if "bact" in n:
        return "bacterial"
    if "vir" in n:
        return "viral"
    if "normal" in n or "healthy" in n or "no finding" in n:
        return "normal"
    if "pneum" in n:  # binary Kermany task: pneumonia = bacterial or viral
        return "pneumonia"
    raise CXRConfigError(
        f"synthetic data: cannot draw class {name!r}; names must contain "
        "'bacterial', 'viral', 'normal' or 'pneumonia'"
    )


def _class_counts(n: int, weights: np.ndarray) -> np.ndarray:
    """Split ``n`` into integer counts proportional to ``weights`` (largest remainder)."""
    w = weights / weights.sum()
    raw = w * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


# Peak added density of a consolidation / of viral haze at difficulty 1 and full
# severity (lungs are ~0.6 darker than soft tissue). Tuned so that, on 600 images at
# 64 px, logistic regression on 32x32 pixels gets ~0.57-0.65 balanced accuracy while
# a small CNN gets ~0.85: learnable, with real room for a CNN.
_BACTERIAL_DENSITY = 0.6
_VIRAL_DENSITY = 0.38

_TEX = 96  # side of the grid textures are drawn on (then upsampled): cost independent of size
# Anatomy is smooth, so it is drawn at most this size and upsampled; grain and markers
# are added at full size. Keeps 600 images at 224 px to a few seconds.
_ANATOMY = 128


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (X right, Y down), float32."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    X0, Y0 = np.meshgrid(c, c)
    X0.flags.writeable = Y0.flags.writeable = False
    return X0, Y0


@functools.lru_cache(maxsize=8)
def _upsampler(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices/weights of a separable bilinear resize ``src`` -> ``dst`` (pixel-centre aligned)."""
    pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0.0, src - 1.0)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def _resize(a: np.ndarray, dst: int) -> np.ndarray:
    """Bilinear resize of the last two axes to ``dst`` x ``dst`` (much faster than ndimage.zoom)."""
    if a.shape[-1] == dst:
        return a
    i0, i1, w = _upsampler(a.shape[-1], dst)
    r = a[..., i0, :] * (1.0 - w)[:, None] + a[..., i1, :] * w[:, None]
    return r[..., i0] * (1.0 - w) + r[..., i1] * w


def _noise_fields(rng: np.random.Generator, specs: Sequence[tuple[float, float]], size: int) -> np.ndarray:
    """Zero-mean, unit-std band-pass noise fields, one per ``(lo, hi)`` spec, on a small grid.

    ``lo``/``hi`` are blur sigmas in normalised image units (``hi=0``: low-pass only).
    Fields are drawn on a grid of at most ``_TEX`` px (resize them with :func:`_resize`),
    so their look and cost do not depend on ``size``.
    """
    g = min(size, _TEX)
    px = g / 2.0  # grid pixels per normalised unit
    white = rng.standard_normal((len(specs), g, g), dtype=np.float32)
    out = np.empty_like(white)
    for i, (lo, hi) in enumerate(specs):
        a = ndimage.gaussian_filter(white[i], max(lo * px, 0.3), mode="wrap")
        if hi > 0:
            a -= ndimage.gaussian_filter(white[i], hi * px, mode="wrap")
        out[i] = a / (a.std() + 1e-6)
    return out


# 5x3 bitmaps of the side markers burnt into many real films.
_GLYPHS = {
    "L": ["100", "100", "100", "100", "111"],
    "R": ["110", "101", "110", "101", "101"],
}


# --------------------------------------------------------------------------- params
def _patient_params(rng: np.random.Generator) -> dict:
    """Anatomy and acquisition shared by all images of one patient (plain Python floats)."""
    lung_w = rng.uniform(0.29, 0.35)  # half-width of one lung
    med = rng.uniform(0.07, 0.11)  # mediastinal half-width at the lungs
    p = dict(
        shift_x=rng.normal(0.0, 0.03),
        shift_y=rng.normal(0.0, 0.03),
        scale=rng.uniform(0.90, 1.04),
        rot=np.deg2rad(np.clip(rng.normal(0.0, 2.0), -5, 5)),
        body_w=med + 2.0 * lung_w + rng.uniform(0.07, 0.13),  # chest wall outside the lungs
        neck_w=rng.uniform(0.20, 0.28),
        shoulder_y=rng.uniform(-0.85, -0.72),
        lung_w=lung_w,
        med=med,
        lung_top=rng.uniform(-0.78, -0.66),
        lung_bot=rng.uniform(0.42, 0.56),
        dome=rng.uniform(0.08, 0.14),
        heart_w=rng.uniform(0.30, 0.38),
        heart_h=rng.uniform(0.21, 0.27),
        heart_x=rng.uniform(0.08, 0.14),  # toward the patient's left (image right)
        rib_space=rng.uniform(0.105, 0.125),
        rib_y0=rng.uniform(-0.82, -0.76),
        lung_depth=rng.uniform(0.55, 0.65),
        gain=rng.uniform(1.1, 1.6),
        gamma=rng.uniform(0.85, 1.2),
    )
    p = {k: float(v) for k, v in p.items()}  # Python floats keep float32 arrays float32
    p.update(
        bubble=bool(rng.random() < 0.7),
        sex=str(rng.choice(["M", "F"])),
        age=int(rng.integers(1, 6)),  # Kermany patients are 1-5 years old
    )
    return p


# --------------------------------------------------------------------------- render
def _render(
    p: dict,
    kind: str,
    rng: np.random.Generator,
    size: int,
    difficulty: float,
    masks: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict]:
    """Draw one film. Returns (uint8 image, lung mask, lesion mask, per-image info).

    The masks are ``None`` unless ``masks`` (upsampling them costs time).

    Densities ``D`` add up like tissue thickness (lungs subtract: air); the film maps
    them through a saturating exposure curve. Everything is float32 and uses cheap
    soft steps (``_soft(margin / width)``) because this runs once per image.
    """
    contrast = 2.0 / (1.0 + difficulty)  # lesion contrast: x2 at 0, x1 at 1, x0.5 at 3
    noise_scale = (1.0 + difficulty) / 2.0
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    nrm = lambda s: float(rng.normal(0.0, s))  # noqa: E731
    R = min(size, _ANATOMY)  # anatomy grid (upsampled to ``size`` before the film stage)
    edge = max(0.012, 1.6 / R)  # never sharper than ~1 px, so small images are anti-aliased
    # One draw of all random fields up front keeps the rng stream simple.
    vessel_n, tex_a, tex_b = _resize(_noise_fields(rng, [(0.016, 0.06), (0.06, 0.0), (0.018, 0.05)], R), R)
    grain = rng.standard_normal((size, size), dtype=np.float32)

    # Pixel grid in [-1, 1]; mapped into the patient's body frame (inverse similarity
    # transform) so every structure moves, scales and rotates together.
    X0, Y0 = _grid(R)
    dx, dy = p["shift_x"] + nrm(0.015), p["shift_y"] + nrm(0.015)  # studies never align exactly
    th = p["rot"] + np.deg2rad(nrm(1.0))
    sc = p["scale"] * u(0.98, 1.02)
    ct, st = float(np.cos(th)) / sc, float(np.sin(th)) / sc
    Xs, Ys = X0 - dx, Y0 - dy
    X = Xs * ct + Ys * st
    Y = Ys * ct - Xs * st
    del Xs, Ys
    U = np.abs(X)  # distance from the midline: most anatomy is left/right symmetric
    right = X < 0  # image left = patient right

    bot = p["lung_bot"] + nrm(0.025)  # depth of inspiration varies per film
    top = p["lung_top"]
    med, lw = p["med"], p["lung_w"]

    # Soft-tissue body: neck widening into the shoulders, thicker at the centre.
    bw = p["neck_w"] + (p["body_w"] - p["neck_w"]) * _soft((Y - p["shoulder_y"]) / 0.07)
    body = _soft((bw - U) / 0.02)
    q = U / (bw + 0.05)
    thick = np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0))
    D = body * (0.45 + 0.45 * thick)

    # Lungs: an egg shape (rounded apex, widest at the base) cut medially by the
    # mediastinum and below by the diaphragm dome; the right dome sits higher.
    uc = med + lw * 0.95
    yc = bot - 0.12
    b = yc - top
    a = lw * (1.0 + 0.18 * np.clip((Y - yc) / b, -1.0, 0.3))
    ex, ey = (U - uc) / a, np.minimum(Y - yc, 0.0) / b
    rr = np.sqrt(ex * ex + ey * ey)
    dome_top = bot - p["dome"] - 0.03 * right
    lat = np.clip((U - uc) / (lw * 1.05), -1.0, 1.0)
    dome_y = dome_top + (bot - dome_top) * lat * lat
    lung = _soft((1.0 - rr) * a / edge) * _soft((dome_y - Y) / edge) * _soft((U - med) / edge)
    base = np.clip((Y - top) / (bot - top), 0.0, 1.0)
    # Less air contrast toward the bases (overlapping soft tissue, smaller AP depth).
    D -= p["lung_depth"] * lung * (0.8 + 0.2 * thick) * (1.0 - 0.15 * base * base)

    # Mediastinum (aortic knob on the patient's left), spine, trachea.
    kx, ky = (X - med - 0.02) / 0.05, (Y - top - 0.28) / 0.06
    D += 0.05 * np.exp(-(kx * kx + ky * ky))
    D += 0.10 * _soft((med + 0.02 - U) / 0.02) * _soft((dome_top + 0.1 - Y) / 0.05)
    vert = 0.75 + 0.25 * np.cos((Y - p["rib_y0"]) * (2 * np.pi / p["rib_space"]))  # discs darker
    D += 0.10 * _soft((0.065 - U) / 0.012) * vert
    hil_y = top + 0.5 * (bot - top)
    D -= 0.12 * _soft((0.028 - np.abs(X + 0.01)) / 0.01) * _soft((hil_y - 0.12 - Y) / 0.03)

    # Heart: a tilted ellipse (apex down and to the patient's left) resting on the
    # left dome; it merges with the mediastinum and overlaps the left lung.
    hw, hh = p["heart_w"] * u(0.97, 1.03), p["heart_h"]
    ex, ey = X - p["heart_x"], Y - (bot - 0.6 * hh)
    ex, ey = (ex * 0.9 + ey * 0.44) / hw, (ey * 0.9 - ex * 0.44) / hh
    heart = _soft((1.0 - np.sqrt(ex * ex + ey * ey)) * hh / 0.03)
    D += heart * (0.08 + 0.4 * lung)  # mostly replaces air in front of the lung

    # Hila and vascular markings (every class): ridges fading away from the hila.
    ex, ey = U - med - 0.05, Y - hil_y
    d_hil2 = ex * ex + ey * ey
    hx = (U - med - 0.07) / 0.07
    D += 0.09 * np.exp(-(hx * hx + (ey / 0.1) ** 2)) * lung
    vessels = np.clip(0.7 - np.abs(vessel_n), 0.0, None) * np.exp(-np.sqrt(d_hil2) / 0.25)
    D += 0.06 * vessels * lung

    # Ribs, as one periodic pattern along curved coordinates (no per-rib loop).
    # Posterior arcs leave the spine, rise a little, then curve down laterally; rib k
    # follows y = y0 + k*space - 0.2u + (0.62 + 0.02k)u^2. Anterior ribs (fainter) run
    # down toward the midline.
    U2 = U * U
    sp = p["rib_space"] + 0.02 * U2
    k = (Y - p["rib_y0"] + 0.2 * U - 0.62 * U2) / sp
    kr = np.clip(np.round(k), 0.0, 9.0)
    dist = np.abs(k - kr) * sp / (0.03 + 0.002 * kr)
    post = _soft((1.0 - dist) / 0.2) * (0.75 + 0.25 * np.minimum(dist, 1.0))  # bright cortex
    post *= _soft((U - 0.06) / 0.02)
    k = (Y - p["rib_y0"] - 0.28 - 0.42 * (0.85 - U)) / p["rib_space"]
    kr = np.clip(np.round(k), 0.0, 9.0)
    ant = _soft((1.0 - np.abs(k - kr) * p["rib_space"] / 0.03) / 0.25) * _soft((U - 0.38) / 0.06)
    D += (0.065 * post + 0.03 * ant) * body * _soft((bot + 0.12 - Y) / 0.04)

    # Clavicles.
    yc_cla = top + 0.1 - 0.3 * U + 0.2 * U2
    cla = _soft((1.0 - np.abs(Y - yc_cla) / 0.035) / 0.15) * _soft((U - 0.05) / 0.02)
    D += 0.16 * cla * _soft((p["body_w"] - 0.1 - U) / 0.03)

    # Abdomen: liver under the right dome, gastric air bubble under the left.
    D += 0.05 * _soft((Y - dome_y - 0.05) / 0.05) * right * body
    if p["bubble"]:
        ex, ey = (X - uc - 0.05) / 0.09, (Y - bot - 0.09) / 0.05
        D -= 0.14 * _soft((1.0 - ex * ex - ey * ey) / 0.25)

    # Findings. Lesions replace air by fluid/cells, so they add density inside the lung.
    def consolidation(s: float, r: float) -> np.ndarray:
        """A lobulated, soft-edged opacity in the central/lower zone of one lung (s=-1: right)."""
        sX = s * X
        cu = med + lw * u(0.5, 1.5)
        cy = top + (bot - top) * u(0.45, 0.9)
        field = np.zeros_like(D)
        for _ in range(4):  # lobulated outline from a few overlapping blobs
            ou, oy = nrm(0.6 * r), nrm(0.6 * r)
            rs = r * u(0.6, 1.0)
            ex, ey = sX - cu - ou, Y - cy - oy
            field += np.exp((ex * ex + ey * ey) * (-0.5 / rs**2))
        blob = _soft((field - 0.5) / 0.12)
        if s < 0 and rng.random() < 0.4:  # right middle lobe: flat border at the fissure
            blob *= _soft((Y - (cy - 0.5 * r)) / 0.006)
        return blob * (sX > 0)

    def haze() -> tuple[np.ndarray, np.ndarray]:
        """Patchy reticular perihilar haze in both lungs: (density pattern, extent)."""
        sig_h = u(0.2, 0.3)
        peri = 0.75 * np.exp(d_hil2 * (-0.5 / sig_h**2)) + 0.25 * _soft((Y - hil_y) / 0.1)
        patches = _soft(1.8 * tex_a + 0.6)  # patchy, perihilar, lower zones too
        retic = np.clip(tex_b, 0.0, 2.5)  # reticular (interstitial) texture
        extent = peri * patches * lung
        return extent * (0.55 + 0.45 * retic), extent

    # Real subtypes overlap (bacterial bronchopneumonia is patchy; viral pneumonia can
    # show a focal opacity), which keeps bacterial vs viral the harder pair.
    les_field, les_thr = np.zeros_like(D), 1.0  # soft lesion extent, and its mask threshold
    info: dict = {"n_lesions": 0, "lesion_side": "none", "severity": 0.0}
    if kind == "bacterial":
        sev = u(0.35, 1.0)
        s = 1.0 if rng.random() < 0.5 else -1.0
        n_les = 1 if rng.random() < 0.7 else 2
        lesion = np.zeros_like(D)
        for _ in range(n_les):
            np.maximum(lesion, consolidation(s, u(0.07, 0.13) * sev**0.3), out=lesion)
        lesion *= lung * (0.8 + 0.1 * np.clip(tex_a, -2.0, 2.0))  # mottled, confined to the lung
        D += (_BACTERIAL_DENSITY * contrast * sev) * lesion
        les_field, les_thr = lesion, 0.4
        if rng.random() < 0.3:
            pattern, _ = haze()
            D += (0.4 * _VIRAL_DENSITY * contrast * sev) * pattern
        info = {"n_lesions": n_les, "lesion_side": "right" if s < 0 else "left", "severity": sev}
    elif kind == "viral":
        sev = u(0.35, 1.0)
        pattern, extent = haze()
        D += (_VIRAL_DENSITY * contrast * sev) * pattern
        les_field, les_thr = extent, 0.3
        n_les = 0
        if rng.random() < 0.25:
            s = 1.0 if rng.random() < 0.5 else -1.0
            focal = consolidation(s, u(0.05, 0.08)) * lung
            D += (0.5 * _BACTERIAL_DENSITY * contrast * sev) * focal
            np.maximum(les_field, focal, out=les_field)
            n_les = 1
        info = {"n_lesions": n_les, "lesion_side": "both", "severity": sev}

    D = _resize(D, size)
    lung_mask = les_mask = None
    if masks:
        # Visible lung fields, heart shadow excluded (as in lung segmentation sets).
        lung_mask = _resize(lung * (1.0 - heart), size) > 0.5
        les_mask = _resize(les_field, size) > les_thr
    X0, Y0 = _grid(size)

    # Exposure: film blackening saturates with density; gain/gamma vary per study.
    gain = p["gain"] * u(0.93, 1.07)
    np.clip(D, 0.0, None, out=D)
    img = 1.0 - np.exp(D * -gain)
    img *= 1.0 / (1.0 - np.exp(-gain * 1.2))
    np.clip(img, 0.0, 1.0, out=img)
    img **= p["gamma"] * u(0.95, 1.05)
    # Uneven illumination / heel effect, then film grain (fine + slightly clumped).
    g0, g1, g2 = nrm(0.035), nrm(0.035), nrm(0.035)
    img += g0 * X0 + g1 * Y0 + g2 * (X0 * X0 - 0.33)
    clump = ndimage.gaussian_filter(grain, max(0.006 * size / 2, 0.3))
    clump *= 1.0 / (clump.std() + 1e-6)
    img += noise_scale * (0.022 * grain + 0.018 * clump)
    img = img * u(0.92, 1.0) + u(0.0, 0.05)
    np.clip(img, 0.0, 1.0, out=img)

    # Burnt-in side marker, equally often for every class (so never a shortcut).
    info["marker"] = bool(rng.random() < 0.3)
    if info["marker"]:
        h = max(5, int(round(size * u(0.06, 0.1))))
        w = max(4, int(round(h * 0.75)))
        m = max(1, int(round(size * 0.03)))
        r0 = m if rng.random() < 0.5 else size - m - h
        c0 = m if rng.random() < 0.5 else size - m - w
        img[r0 : r0 + h, c0 : c0 + w] = 0.93
        glyph = np.array([[ch == "1" for ch in row] for row in _GLYPHS["L" if rng.random() < 0.5 else "R"]])
        gy = np.linspace(0, 4.999, max(h - 2, 1)).astype(int)
        gx = np.linspace(0, 2.999, max(w - 2, 1)).astype(int)
        sub = img[r0 + 1 : r0 + h - 1, c0 + 1 : c0 + w - 1]
        sub[glyph[np.ix_(gy, gx)]] = 0.15

    img *= 255.0
    img += 0.5
    return img.astype(np.uint8), lung_mask, les_mask, info

# --------------------------------------------------------------------------- public API
def make_synthetic_cxr(
    n: int = 600,
    image_size: int = 224,
    seed: int = 0,
    class_names: Sequence[str] = DEFAULT_CLASSES,
    images_per_patient: tuple[int, int] = (1, 3),
    difficulty: float = 1.0,
    class_weights: Sequence[float] | Mapping[str, float] | None = None,
    id_prefix: str = "synth",
    return_masks: bool = False,
) -> CXRDataset | tuple[CXRDataset, dict[str, np.ndarray]]:
    """Draw a deterministic synthetic chest X-ray dataset.

    Args:
        n: number of images.
        image_size: side of the square images in pixels.
        seed: the same seed gives byte-identical images; different seeds differ.
        class_names: classes in label-column order; each name must contain
            ``bacterial``, ``viral``, ``normal`` or ``pneumonia`` (the latter draws
            bacterial or viral findings 2:1, as in Kermany; see ``meta['finding']``).
        images_per_patient: inclusive (min, max) images per patient; all images of
            a patient share anatomy, acquisition habits and class (the last patient
            of a class gets fewer when its count runs out).
        difficulty: ``>= 0``; higher lowers lesion contrast and raises noise.
        class_weights: relative class frequencies (sequence in ``class_names`` order
            or a mapping by name, e.g. :data:`KERMANY_CLASS_WEIGHTS`); default balanced.
        id_prefix: patient ids are ``f"{id_prefix}-{i:06d}"``.
        return_masks: also return ``{"lung": (N,H,W) bool, "lesion": (N,H,W) bool}``;
            ``lung`` is the visible lung fields (heart shadow excluded); ``lesion``
            the findings (e.g. to check that saliency maps point at the lesion).

    Returns:
        An in-memory :class:`CXRDataset` (``uint8`` items ``(N, H, W)``, one-hot
        labels, meta with ``patient_id``, ``source="synthetic"``, ``item``, ``label``,
        ``finding``, ``sex``, ``age``, ``view``, ``severity``, ``n_lesions``,
        ``lesion_side``, ``marker``), plus the masks when ``return_masks``.
    """
    names = [str(c) for c in class_names]
    if not names or len(set(names)) != len(names):
        raise CXRConfigError(f"synthetic data: class names must be unique and non-empty, got {names}")
    kinds = [_kind_of(c) for c in names]
    if int(n) < 1 or int(image_size) < 8:
        raise CXRConfigError(f"synthetic data: need n >= 1 and image_size >= 8 (got {n}, {image_size})")
    n, image_size = int(n), int(image_size)
    lo, hi = (int(v) for v in images_per_patient)
    if not 1 <= lo <= hi:
        raise CXRConfigError(f"synthetic data: images_per_patient must be 1 <= min <= max, got {images_per_patient}")
    if not np.isfinite(difficulty) or difficulty < 0:
        raise CXRConfigError(f"synthetic data: difficulty must be >= 0, got {difficulty}")
    if class_weights is None:
        w = np.ones(len(names))
    elif isinstance(class_weights, Mapping):
        missing = [c for c in names if c not in class_weights]
        if missing:
            raise CXRConfigError(f"synthetic data: class_weights has no entry for {missing}")
        w = np.array([float(class_weights[c]) for c in names])
    else:
        w = np.asarray(class_weights, float)
    if w.shape != (len(names),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise CXRConfigError(f"synthetic data: class_weights must be {len(names)} non-negative numbers, got {class_weights}")

    # Plan: exact class counts, then patients of one class each, in shuffled order.
    plan_rng = np.random.default_rng([seed, 7919])
    patients: list[tuple[int, int]] = []  # (class index, number of images)
    for ci, cnt in enumerate(_class_counts(n, w)):
        while cnt > 0:
            k = min(int(plan_rng.integers(lo, hi + 1)), cnt)
            patients.append((ci, k))
            cnt -= k
    patients = [patients[i] for i in plan_rng.permutation(len(patients))]

    images = np.empty((n, image_size, image_size), np.uint8)
    lungs = np.empty(images.shape, bool) if return_masks else None
    lesions = np.empty(images.shape, bool) if return_masks else None
    labels = np.zeros((n, len(names)), np.float32)
    rows = []
    i = 0
    for pi, (ci, k) in enumerate(patients):
        prng = np.random.default_rng([seed, pi, _PATIENT_KEY])
        params = _patient_params(prng)
        kind = kinds[ci]
        if kind == "pneumonia":
            kind = "bacterial" if prng.random() < 2 / 3 else "viral"
        pid = f"{id_prefix}-{pi:06d}"
        for j in range(k):
            irng = np.random.default_rng([seed, pi, j + 1])
            img, lung, les, info = _render(params, kind, irng, image_size, float(difficulty), return_masks)
            images[i] = img
            if return_masks:
                lungs[i], lesions[i] = lung, les
            labels[i, ci] = 1.0
            rows.append(
                dict(
                    item=f"{pid}_{j}",
                    patient_id=pid,
                    label=names[ci],
                    finding=kind,
                    sex=params["sex"],
                    age=params["age"],
                    view="PA",
                    **info,
                )
            )
            i += 1
    meta = pd.DataFrame(rows)
    meta["source"] = "synthetic"
    ds = CXRDataset(images, labels, names, meta, name="synthetic")
    if return_masks:
        return ds, {"lung": lungs, "lesion": lesions}
    return ds


def write_synthetic_folder(
    root: str | os.PathLike,
    n: int = 600,
    image_size: int = 224,
    seed: int = 0,
    **kwargs,
) -> CXRDataset:
    """Write :func:`make_synthetic_cxr` images as PNG files in a folder-per-class layout.

    Files are ``root/<class>/<patient>_<k>.png`` plus ``root/labels.csv`` with columns
    ``path`` (relative to ``root``), ``label`` and ``patient``, so both the folder
    loader (patient regex ``^(.+)_\\d+$`` on the stem) and the CSV-manifest loader
    can read it (auto-detection reads it as class folders: Kermany's layout needs
    ``train/``, ``test/`` or ``val/`` folders holding ``NORMAL/`` and ``PNEUMONIA/``).

    Args:
        root: output folder (created; existing files with the same names are replaced).
        n, image_size, seed: as in :func:`make_synthetic_cxr`.
        **kwargs: other :func:`make_synthetic_cxr` arguments (``class_names``, ...).

    Returns:
        The same dataset, path-based: ``items`` are the absolute PNG paths.
    """
    from PIL import Image

    kwargs.pop("return_masks", None)
    ds = make_synthetic_cxr(n=n, image_size=image_size, seed=seed, **kwargs)
    root = Path(root)
    for c in ds.class_names:
        (root / c).mkdir(parents=True, exist_ok=True)
    rel = [f"{lab}/{item}.png" for lab, item in zip(ds.meta["label"], ds.meta["item"])]
    for img, r in zip(ds.items, rel):
        Image.fromarray(img, mode="L").save(root / r)
    pd.DataFrame({"path": rel, "label": ds.meta["label"], "patient": ds.meta["patient_id"]}).to_csv(
        root / "labels.csv", index=False
    )
    meta = ds.meta.copy()
    meta["item"] = [str((root / r).resolve()) for r in rel]
    return CXRDataset(meta["item"].tolist(), ds.labels, ds.class_names, meta, name="synthetic")


def preview_grid(ds: CXRDataset, per_class: int = 6, pad: int = 4) -> np.ndarray:
    """One row per class with its first ``per_class`` images, as a ``uint8`` mosaic."""
    imgs = np.asarray(ds.items)
    h, w = imgs.shape[1:3]
    idx = ds.class_index()
    grid = np.full((ds.num_classes * (h + pad) + pad, per_class * (w + pad) + pad), 255, np.uint8)
    for r in range(ds.num_classes):
        for c, i in enumerate(np.flatnonzero(idx == r)[:per_class]):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = imgs[i]
    return grid


def save_preview(path: str | os.PathLike = "/tmp/synthetic_preview.png", per_class: int = 6, **kwargs) -> Path:
    """Render a fresh dataset and save :func:`preview_grid` of it as a PNG.

    Args:
        path: output PNG.
        per_class: columns per class row.
        **kwargs: :func:`make_synthetic_cxr` arguments (defaults: ``n=60``, 224 px).
    """
    from PIL import Image

    kwargs.setdefault("n", max(10 * per_class, 30))
    ds = make_synthetic_cxr(**kwargs)
    Image.fromarray(preview_grid(ds, per_class)).save(path)
    return Path(path)


if __name__ == "__main__":  # python -m cxr_tf.datasets.synthetic [out.png]
    import sys

    print(save_preview(sys.argv[1] if len(sys.argv) > 1 else "/tmp/synthetic_preview.png"))
