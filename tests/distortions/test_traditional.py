"""Each traditional distortion is checked for the property that defines it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_tf.distortions import TRADITIONAL, apply_distortion, get_distortion, list_distortions, spectral_noise
from cxr_tf.errors import CXRConfigError, CXRInputError


def _image(n=64, seed=0):
    """A CXR-like smooth image with edges: blurred noise + a bright disk, in [0.15, 0.85]."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.standard_normal((n, n)), 3)
    yy, xx = np.mgrid[0:n, 0:n]
    a = (a - a.min()) / (a.max() - a.min())
    a = 0.5 * a + 0.4 * ((yy - n / 2) ** 2 + (xx - n / 3) ** 2 < (n / 5) ** 2)
    return (0.15 + 0.7 * (a - a.min()) / (a.max() - a.min())).astype(np.float32)


def _radial_slope(noise):
    """Slope of log power vs log frequency (radially averaged, mid frequencies)."""
    p = np.abs(np.fft.fft2(noise)) ** 2
    h, w = noise.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    bins = np.geomspace(0.02, 0.45, 15)
    idx = np.digitize(f.ravel(), bins)
    fm, pm = [], []
    for b in range(1, len(bins)):
        m = idx == b
        fm.append(f.ravel()[m].mean())
        pm.append(p.ravel()[m].mean())
    return np.polyfit(np.log(fm), np.log(pm), 1)[0]


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2))


def _hf_energy(a):
    """Energy above a quarter of the sampling frequency."""
    p = np.abs(np.fft.fft2(a - a.mean())) ** 2
    f = np.sqrt(np.fft.fftfreq(a.shape[0])[:, None] ** 2 + np.fft.fftfreq(a.shape[1])[None, :] ** 2)
    return p[f > 0.25].sum()


def test_registry_has_every_s2_distortion():
    need = {"lightness", "contrast", "white_uniform_noise", "white_gaussian_noise", "pink_noise", "blue_noise",
            "coloured_noise", "checkerboard", "gaussian_blur", "bilateral_blur", "shift", "affine", "homography",
            "linear_warp", "cubic_warp", "ghosting", "chromatic_aberration", "jpeg"}
    assert need <= set(list_distortions())
    assert set(list_distortions("noise")) >= {"pink_noise", "blue_noise", "checkerboard"}
    with pytest.raises(CXRConfigError, match="unknown distortion"):
        get_distortion("nope")


@pytest.mark.parametrize("name", sorted(TRADITIONAL))
def test_contract_range_identity_and_reproducible(name):
    img = _image()
    out0, _ = apply_distortion(name, img, 0.0, 1)
    tol = 2.5 / 255 if name == "jpeg" else 1e-5  # JPEG q=100 still rounds to 8 bit
    assert np.abs(out0 - img).max() <= tol
    a, pa = apply_distortion(name, img, 0.8, 7)
    b, pb = apply_distortion(name, img, 0.8, 7)
    assert a.shape == img.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and pa == pb
    json.dumps(pa)  # manifest-ready
    assert np.abs(a - img).mean() > 1e-3  # it does something
    # stronger severity moves further from the image (same random draw)
    lo, _ = apply_distortion(name, img, 0.3, 7)
    assert np.abs(a - img).mean() > np.abs(lo - img).mean()


def test_bad_inputs_are_clear_errors():
    with pytest.raises(CXRInputError, match="gray image"):
        apply_distortion("shift", np.zeros((4, 4, 3)), 0.5)
    with pytest.raises(CXRInputError, match=r"\[0, 1\]"):
        apply_distortion("shift", np.full((8, 8), 255.0), 0.5)
    with pytest.raises(CXRConfigError, match="severity"):
        apply_distortion("shift", np.zeros((8, 8)), 1.5)


@pytest.mark.parametrize("beta", [-2.0, -1.0, 0.0, 1.0, 2.0])
def test_spectral_noise_slope(beta):
    slopes = [_radial_slope(spectral_noise((128, 128), beta, np.random.default_rng(s))) for s in range(4)]
    assert abs(np.mean(slopes) - beta) < 0.15


def test_pink_and_blue_noise_added_have_their_slopes():
    img = np.full((128, 128), 0.5, np.float32)  # flat: the added noise is all there is (no clipping)
    for name, beta in (("pink_noise", -1.0), ("blue_noise", 1.0), ("white_gaussian_noise", 0.0)):
        slopes = [_radial_slope(apply_distortion(name, img, 0.5, s)[0] - img) for s in range(4)]
        assert abs(np.mean(slopes) - beta) < 0.2, (name, slopes)


def test_white_noise_stats():
    img = np.full((128, 128), 0.5, np.float32)
    u = apply_distortion("white_uniform_noise", img, 1.0, 0)[0] - img
    assert abs(u.max() - 0.35) < 0.01 and abs(u.min() + 0.35) < 0.01 and abs(u.std() - 0.35 / np.sqrt(3)) < 0.01
    g = apply_distortion("white_gaussian_noise", img, 0.5, 0)[0] - img
    assert abs(g.std() - 0.1) < 0.005


def test_checkerboard_is_periodic_pattern():
    img = np.full((64, 64), 0.5, np.float32)
    out, p = apply_distortion("checkerboard", img, 1.0, 3)
    d = out - img
    c = p["cell"]
    assert np.allclose(np.abs(d), 0.15, atol=1e-6)
    assert np.allclose(d, np.roll(d, 2 * c, axis=0)) and np.allclose(d, -np.roll(d, c, axis=1))


def test_jpeg_psnr_decreases_with_severity():
    img = _image(128)
    ps = [_psnr(apply_distortion("jpeg", img, s)[0], img) for s in np.linspace(0, 1, 6)]
    assert all(a > b for a, b in zip(ps, ps[1:])), ps


@pytest.mark.parametrize("name", ["gaussian_blur", "bilateral_blur"])
def test_blur_lowers_high_frequency_energy_monotonically(name):
    img = np.clip(_image(64) + np.random.default_rng(0).normal(0, 0.03, (64, 64)), 0, 1).astype(np.float32)
    e = [_hf_energy(apply_distortion(name, img, s, 0)[0]) for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(a > b for a, b in zip(e, e[1:])), e


def test_shift_moves_content_by_its_params():
    img = np.zeros((64, 64), np.float32)
    img[30:34, 30:34] = 1.0
    out, p = apply_distortion("shift", img, 1.0, 5)
    cy, cx = np.argwhere(out > 0.5).mean(0)
    assert abs(cx - (31.5 + p["dx"])) < 0.6 and abs(cy - (31.5 + p["dy"])) < 0.6
    assert np.hypot(p["dx"], p["dy"]) == pytest.approx(0.15 * 64, rel=1e-5)


@pytest.mark.parametrize("name", ["affine", "homography"])
def test_geometric_warps_map_points_by_their_matrix(name):
    img = np.zeros((64, 64), np.float32)
    img[40:43, 20:23] = 1.0  # centre (21, 41) in (x, y)
    out, p = apply_distortion(name, img, 0.8, 11)
    m = np.asarray(p["matrix"])
    m3 = np.vstack([m, [0, 0, 1]]) if m.shape == (2, 3) else m
    # OpenCV warps sample dst(x) = src(M^-1 x): the dot lands at M @ (21, 41)
    q = m3 @ np.array([21.0, 41.0, 1.0])
    q = q[:2] / q[2]
    w = out / out.sum()
    yy, xx = np.mgrid[0:64, 0:64]
    assert abs((w * xx).sum() - q[0]) < 0.7 and abs((w * yy).sum() - q[1]) < 0.7


def test_linear_vs_cubic_warp_fields():
    from cxr_tf.distortions.traditional import displacement_field

    lin = displacement_field((64, 64), 4, 3.0, 1, np.random.default_rng(0))
    cub = displacement_field((64, 64), 4, 3.0, 3, np.random.default_rng(0))
    assert lin.shape == cub.shape == (2, 64, 64)
    assert np.abs(lin).max() <= 3.0 + 1e-6
    # piecewise linear: the second difference vanishes except at a few knot rows;
    # the cubic field has curvature almost everywhere
    d2l = np.abs(np.diff(lin[0], 2, axis=1)) > 1e-4
    d2c = np.abs(np.diff(cub[0], 2, axis=1)) > 1e-4
    assert d2l.mean() < 0.25 and d2c.mean() > 0.75


def test_ghosting_adds_shifted_copy():
    img = np.zeros((64, 64), np.float32)
    img[20:24, 20:24] = 1.0
    out, p = apply_distortion("ghosting", img, 1.0, 2)
    a = p["alpha"]
    assert a == pytest.approx(0.4) and out.sum() == pytest.approx(img.sum(), rel=1e-4)  # a copy, no loss
    yy, xx = np.mgrid[0:64, 0:64]
    w = out / out.sum()
    # centroid = (1 - a) * original + a * (original shifted by (dx, dy))
    assert (w * xx).sum() == pytest.approx(21.5 + a * p["dx"], abs=0.05)
    assert (w * yy).sum() == pytest.approx(21.5 + a * p["dy"], abs=0.05)
    assert out.max() == pytest.approx(1.0 - a, abs=1e-5) or np.hypot(p["dx"], p["dy"]) < 4


def test_chromatic_aberration_grows_from_centre():
    from scipy import ndimage

    tex = ndimage.gaussian_filter(np.random.default_rng(0).random((128, 128)), 1.5)
    img = ((tex - tex.min()) / (tex.max() - tex.min())).astype(np.float32)  # same texture everywhere
    out, _ = apply_distortion("chromatic_aberration", img, 1.0)
    d = np.abs(out - img)
    yy, xx = np.mgrid[0:128, 0:128]
    r = np.hypot(yy - 63.5, xx - 63.5)
    assert d[r < 10].mean() < 0.3 * d[(r > 40) & (r < 60)].mean()


def test_photometric_properties():
    img = _image()
    out, p = apply_distortion("lightness", img, 0.5, 0)
    assert np.allclose(out, np.clip(img + p["delta"], 0, 1), atol=1e-6) and abs(p["delta"]) == pytest.approx(0.2)
    out, p = apply_distortion("contrast", img, 0.5, 0)
    m = img.mean()
    inside = (img - m) * p["factor"] + m
    ok = (inside > 0) & (inside < 1)
    assert np.allclose(out[ok] - m, (img[ok] - m) * p["factor"], atol=1e-5)


def test_distortion_grid_png(tmp_path):
    from PIL import Image

    from cxr_tf.distortions.grid import distortion_grid

    out = distortion_grid(_image(32), tmp_path / "g.png", names=["shift", "jpeg"], severities=(0.2, 0.5, 1.0))
    im = Image.open(out)
    assert im.format == "PNG" and im.size == (4 * 160, 2 * 160)


def test_cli_distortion_grid(tmp_path):
    from PIL import Image

    from cxr_tf.cli import main

    src = tmp_path / "x.png"
    Image.fromarray((_image(48) * 255).astype(np.uint8)).save(src)
    out = tmp_path / "grid.png"
    assert main(["distortion-grid", str(src), "--out", str(out), "--image-size", "32",
                 "--distortions", "jpeg,pink_noise"]) == 0
    assert Image.open(out).size == (4 * 160, 2 * 160)
    assert main(["distortion-grid", str(src), "--out", str(out), "--distortions", "nope"]) == 2


def test_coloured_noise_added_has_the_reported_spectral_slope():
    # spectral_noise documents power ~ f**beta, so the log-log slope of the added noise is +beta
    img = np.full((256, 256), 0.5, np.float32)  # flat, and 0.5 +- 5 sigma stays in [0, 1]: no clipping
    draws = [apply_distortion("coloured_noise", img, 0.5, seed) for seed in range(20)]
    brown_ish = next((o, p) for o, p in draws if p["beta"] < -1.0)  # reddish
    violet_ish = next((o, p) for o, p in draws if p["beta"] > 1.0)  # bluish
    slopes = []
    for out, p in (brown_ish, violet_ish):
        noise = out.astype(np.float64) - img
        assert noise.std() == pytest.approx(p["sigma"], rel=1e-3) and p["sigma"] == pytest.approx(0.1)
        slope = _radial_slope(noise)
        assert abs(slope - p["beta"]) < 0.15, (p["beta"], slope)
        slopes.append(slope)
    assert slopes[1] - slopes[0] > 2.0


@pytest.mark.parametrize("severity", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gamma_is_exactly_the_power_law_it_reports(severity, seed):
    img = _image()
    img[0, :3] = (0.0, 1.0, 0.5)  # the fixed points 0 and 1, and a mid value
    out, p = apply_distortion("gamma", img, severity, seed)
    g = p["gamma"]
    assert abs(np.log2(g)) == pytest.approx(1.5 * severity, abs=1e-12)
    np.testing.assert_allclose(out, img.astype(np.float64) ** g, rtol=1e-6, atol=1e-7)
    assert out[0, 0] == 0.0 and out[0, 1] == 1.0


def test_gamma_draws_both_directions():
    gs = {apply_distortion("gamma", _image(), 1.0, seed)[1]["gamma"] for seed in range(16)}
    assert gs == {2.0 ** -1.5, 2.0 ** 1.5}


@pytest.mark.parametrize("severity", [0.3, 0.5])
def test_bilateral_keeps_edges_that_gaussian_blur_of_equal_smoothing_loses(severity):
    cv2 = pytest.importorskip("cv2")
    n, lo, hi, noise_sd = 64, 0.2, 0.8, 0.03
    clean = np.where(np.arange(n)[None, :] < n // 2, lo, hi) * np.ones((n, 1))
    img = np.clip(clean + np.random.default_rng(0).normal(0, noise_sd, (n, n)), 0, 1).astype(np.float32)
    flat = np.zeros((n, n), bool)
    flat[:, 4:n // 2 - 8] = flat[:, n // 2 + 8:n - 4] = True  # away from the edge and the border

    def flat_sd(a):
        return float((a - clean)[flat].std())

    def edge_step(a):  # contrast across the edge: the jump between its two adjacent columns
        return float(a[:, n // 2].mean() - a[:, n // 2 - 1].mean())

    out, p = apply_distortion("bilateral_blur", img, severity, 0)
    assert p["sigma_color"] < (hi - lo) / 3  # the edge is far above the range sigma
    assert flat_sd(out) < 0.4 * flat_sd(img)  # it does smooth flat regions
    assert edge_step(out) > 0.9 * (hi - lo)  # ... and keeps the edge
    # the weakest Gaussian blur that smooths flat regions at least as much
    sigma = next(s for s in np.arange(0.2, 6.0, 0.05)
                 if flat_sd(cv2.GaussianBlur(img, (0, 0), sigmaX=float(s), borderType=4)) <= flat_sd(out))
    gauss = cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), borderType=4)
    assert edge_step(gauss) < 0.5 * edge_step(out), (sigma, edge_step(gauss), edge_step(out))
