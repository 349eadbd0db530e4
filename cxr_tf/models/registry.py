"""Model registry: backbones by name, each with its default input convention.

A backbone builder takes a symbolic input tensor (already adapted by
:class:`~cxr_tf.layers.BackboneInput`) and a weights spec and returns the feature
tensor. Builders are registered with :func:`register_backbone`; every classifier,
experiment and explainer finds backbones here by name.

The registry is a leaf: it imports no backbone. Each family module registers itself
when imported, and :mod:`cxr_tf.models` imports the built-in families, so importing
anything from ``cxr_tf.models`` (this module included: the package runs first) makes
them available. A plug-in registers the same way, from its own module.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from cxr_tf.errors import CXRModelError


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What a classifier needs to know about a backbone.

    Attributes:
        name: registry name.
        build: ``build(x, weights) -> (features, layers)``: applies the backbone to
            ``x`` (flat: its layers join the classifier's graph) and returns its
            layers in the backbone's own reference order (input excluded), which
            is what ``freeze_until`` indexes (index 0 = the input layer).
        input_mode: :class:`BackboneInput` mode (``caffe``, ``torch``, ``tf``, ``unit``).
        channels: channels the backbone expects.
        cam_layer: default target layer for CAM explanations.
        reference: the paper, for docstrings and reports.
    """

    name: str
    build: Callable
    input_mode: str = "unit"
    channels: int = 3
    cam_layer: str | None = None
    reference: str = ""


_BACKBONES: dict[str, BackboneSpec] = {}
# Parametrised families (``unet_cbam_encoder_d3w16``): pattern -> factory(name) -> spec or None.
_FAMILIES: dict[str, Callable[[str], "BackboneSpec | None"]] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    _BACKBONES[spec.name] = spec
    return spec


def register_backbone_family(pattern: str, factory: Callable[[str], "BackboneSpec | None"]) -> None:
    """Names matching ``pattern`` are built on demand by ``factory(name)`` (and then cached)."""
    _FAMILIES[pattern] = factory


def get_backbone(name: str) -> BackboneSpec:
    if name not in _BACKBONES:
        for factory in _FAMILIES.values():
            spec = factory(name)
            if spec is not None:
                return register_backbone(spec)
    if name not in _BACKBONES:
        raise CXRModelError(f"unknown backbone {name!r}; available: {sorted(_BACKBONES)}")
    return _BACKBONES[name]


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)
