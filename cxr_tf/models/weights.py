"""Loading backbone weights from a local file by layer name.

Used by the backbones Keras hosts no weights for (ResNet18, SqueezeNet 1.1) and by
experiments that transfer a trunk trained in-domain (e.g. on Kermany) to a new
classifier. Weights are matched by the backbone's stable layer names, so a trunk
saved from one classifier (any head, any number of classes) loads into another.
"""
from __future__ import annotations

import dataclasses
import os

import keras

from cxr_tf.errors import CXRWeightsError


def copy_weights_by_name(dst_layers, src_model: keras.Model, source: str = "model") -> int:
    """Copy weights from ``src_model`` into ``dst_layers`` where layer names match.

    Returns:
        The number of layers whose weights were copied.

    Raises:
        CXRWeightsError: no layer matched, or a matched layer has other shapes.
    """
    src = {l.name: l for l in src_model.layers if l.weights}
    n = 0
    for layer in dst_layers:
        if not layer.weights or layer.name not in src:
            continue
        w = src[layer.name].get_weights()
        mine = layer.get_weights()
        if [a.shape for a in w] != [a.shape for a in mine]:
            raise CXRWeightsError(
                f"{source}: layer {layer.name!r} has shapes {[a.shape for a in w]}, "
                f"the backbone expects {[a.shape for a in mine]}"
            )
        layer.set_weights(w)
        n += 1
    if n == 0:
        raise CXRWeightsError(f"{source}: no layer name matches the backbone (wrong file for this architecture?)")
    return n


def load_local_weights(name: str, weights: str, layers, standalone) -> int:
    """Load ``weights`` (a ``.keras`` model or a backbone ``.weights.h5``) into ``layers``.

    Args:
        name: backbone name, for messages.
        weights: ``"imagenet"`` or a path.
        layers: the backbone's layers in the classifier being built.
        standalone: ``() -> keras.Model``: builds the bare backbone, to receive a
            ``.weights.h5`` written by :func:`save_backbone_weights`.
    """
    if weights == "imagenet":
        raise CXRWeightsError(
            f"Keras hosts no ImageNet weights for {name}. Convert the torchvision weights to a "
            f"Keras file with the layer names of cxr_tf.models.{name} (save_backbone_weights writes "
            "that format) and pass --weights PATH, or use in-domain pretrained weights."
        )
    if not os.path.isfile(weights):
        raise CXRWeightsError(f"{weights}: weights file not found (use --weights none | PATH)")
    try:
        if weights.endswith(".keras"):
            src = keras.models.load_model(weights, compile=False)
        else:
            src = standalone()
            src.load_weights(weights)
    except CXRWeightsError:
        raise
    except Exception as e:
        raise CXRWeightsError(f"{weights}: cannot load as {name} weights ({type(e).__name__}: {e})") from None
    return copy_weights_by_name(layers, src, source=weights)


def save_backbone_weights(model, path: str) -> str:
    """Write the backbone part of a :class:`CXRClassifier` as a ``.keras`` file.

    The file is a plain functional model holding the backbone layers (input adapter
    excluded), loadable with ``weights=path`` into any classifier on the same backbone.
    """
    if not path.endswith(".keras"):
        raise CXRWeightsError(f"{path}: backbone weights are saved as a .keras file")
    feats = model.get_layer(model.backbone_layer_names[-1]).output
    trunk = keras.Model(model.input, feats, name=f"{model.backbone}_trunk")
    trunk.save(path)
    return path


# ----------------------------------------------------------------------------- the resolver
#: Every form a weights argument (``weights=``, ``--weights``, ``--init``, ``--trunk``) may take.
WEIGHTS_FORMS = "none | imagenet | PATH | preset:NAME | run:DIR | ssl:DIR | https://...#sha256=HEX"
#: Prefixes that mark a resolver form (rather than a plain file path) in a flag's value.
RESOLVER_PREFIXES = ("preset:", "run:", "ssl:", "https://", "http://")


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """Where a classifier's starting weights come from.

    Attributes:
        kind: ``none``, ``imagenet``, ``file`` (a ``.keras`` / ``.weights.h5`` / Keras
            applications file), ``ssl`` (an SSL encoder, read by the UNet encoder
            backbone), ``run`` (an earlier run's backbone) or ``preset``.
        spec: the text as given.
        path: the file or folder it resolved to (``None`` for none / imagenet).
        preset: the :class:`~cxr_tf.models.presets.Preset` for ``kind == "preset"``.
    """

    kind: str
    spec: str | None
    path: str | None = None
    preset: object = None

    def builder_arg(self) -> str | None:
        """What the registry's backbone builder receives; run and preset weights are
        copied after the graph exists (:meth:`load_into`)."""
        return {"imagenet": "imagenet", "file": self.path, "ssl": f"ssl:{self.path}"}.get(self.kind)

    def load_into(self, model) -> str | None:
        """Copy run / preset weights into a built classifier; returns what was loaded."""
        if self.kind == "run":
            from cxr_tf.models.transfer import load_backbone_from_run

            load_backbone_from_run(model, self.path)
            return "trunk"
        if self.kind == "preset":
            from cxr_tf.models.presets import load_preset_into

            return load_preset_into(model, self.preset)
        return None if self.kind == "none" else "trunk"


def resolve_weights(spec) -> ResolvedWeights:
    """The one place a weights argument is interpreted (forms: :data:`WEIGHTS_FORMS`).

    A bare PATH may also be a preset folder, an SSL encoder folder or a run folder: the
    folder's own files say which.

    Raises:
        CXRWeightsError: nothing exists at the path (or a subclass from the preset
            loader: unknown preset name, bad checksum).
    """
    if isinstance(spec, ResolvedWeights):
        return spec
    s = None if spec is None else os.fspath(spec).strip()
    if not s or s.lower() == "none":
        return ResolvedWeights("none", spec)
    if s == "imagenet":
        return ResolvedWeights("imagenet", s)
    if s.startswith(("preset:", "https://", "http://")):
        from cxr_tf.models.presets import load_preset

        p = load_preset(s)
        return ResolvedWeights("preset", s, str(p.path), p)
    if s.startswith("run:"):
        return ResolvedWeights("run", s, s[len("run:"):])
    if s.startswith("ssl:"):
        return ResolvedWeights("ssl", s, s[len("ssl:"):])
    if os.path.isdir(s):
        from cxr_tf.models import presets as _p

        if os.path.isfile(os.path.join(s, _p.CONFIG_FILE)) and os.path.isfile(os.path.join(s, _p.METADATA_FILE)):
            p = _p.load_preset(s)
            return ResolvedWeights("preset", s, str(p.path), p)
        if os.path.isfile(os.path.join(s, "model.json")):
            return ResolvedWeights("run", s, s)
        if os.path.isfile(os.path.join(s, "ssl_encoder.json")):
            return ResolvedWeights("ssl", s, s)
        raise CXRWeightsError(f"{s}: a folder that is neither a preset, a run nor an SSL encoder "
                              f"(weights forms: {WEIGHTS_FORMS})")
    if os.path.isfile(s):
        return ResolvedWeights("file", s, s)
    raise CXRWeightsError(f"{s}: weights file or folder not found (weights forms: {WEIGHTS_FORMS})")
