"""Image distortions for perceptual-similarity test sets (SPEC S2).

``traditional``: photometric, noise, blur, spatial and JPEG distortions with a
severity in [0, 1]. ``cnn``: a denoising autoencoder and a distorting GAN, whose
trained models become distortions too. :func:`get_distortion` / :func:`list_distortions`
find any of them by name.
"""
from __future__ import annotations

from cxr_tf.distortions.traditional import TRADITIONAL, Distortion, check_image, check_severity, spectral_noise
from cxr_tf.errors import CXRConfigError

_EXTRA: dict[str, Distortion] = {}


def register_distortion(d: Distortion) -> Distortion:
    """Add a distortion (e.g. a trained CNN one) to the registry under ``d.name``."""
    _EXTRA[d.name] = d
    return d


def list_distortions(family: str | None = None) -> list[str]:
    allx = {**TRADITIONAL, **_EXTRA}
    return [n for n, d in allx.items() if family is None or d.family == family]


def get_distortion(name: str) -> Distortion:
    allx = {**TRADITIONAL, **_EXTRA}
    if name not in allx:
        raise CXRConfigError(f"unknown distortion {name!r}; available: {sorted(allx)}")
    return allx[name]


def apply_distortion(name: str, image, severity: float, rng=None):
    """``get_distortion(name).apply(image, severity, rng)`` -> (image, params)."""
    return get_distortion(name).apply(image, severity, rng)


__all__ = ["TRADITIONAL", "Distortion", "apply_distortion", "check_image", "check_severity", "get_distortion",
           "list_distortions", "register_distortion", "spectral_noise"]
