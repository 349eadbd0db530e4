"""CXRClassifier: backbone + head as one flat Keras functional model.

The graph is built in ``__init__`` (keras-hub style): ``Input -> BackboneInput ->
backbone layers -> head``, with the head built on the backbone's output tensor,
never a nested model, so tf-keras-vis can reach every layer. Every constructor
argument is stored and returned by ``get_config``.
"""
from __future__ import annotations

import re

import keras
import numpy as np

from cxr_tf.errors import CXRConfigError, CXRModelError
from cxr_tf.layers import BackboneInput
from cxr_tf.models.registry import get_backbone

_HEAD_RE = re.compile(r"^(gap|fc\d+(-\d+)*)$")


def parse_head(head: str) -> list[int]:
    """``"gap"`` -> [], ``"fc256-128"`` -> [256, 128] (hidden Dense widths after GAP)."""
    if not _HEAD_RE.match(head or ""):
        raise CXRConfigError(f"head must be 'gap' or like 'fc256-128'; received head={head!r}")
    return [] if head == "gap" else [int(v) for v in head[2:].split("-")]


@keras.saving.register_keras_serializable(package="cxr_tf")
class CXRClassifier(keras.Model):
    """A chest X-ray classifier on a registered backbone.

    Input: gray images ``(N, image_size, image_size, 1)`` in ``[0, 1]``.
    Output: class probabilities ``(N, num_classes)`` (softmax, or sigmoid for multi-label).

    Args:
        backbone: registry name (``resnet50``, ``densenet121``, ``tiny_cnn``, ...).
        num_classes: number of outputs.
        image_size: input side in pixels.
        head: ``"gap"`` or ``"fc256-128"``: GAP then hidden Dense(ReLU) layers then
            the output Dense. Default ``fc256-128`` is the seed-004 "extra FC" head.
            With ResNet50, ``freeze_until=143`` (= ``"conv5_block1_1_conv"``: all of
            conv5 trainable) gives the seed's 15,556,355 trainable parameters; the
            default ``144`` also freezes ``conv5_block1_1_conv`` (15,009,027).
        dropout: dropout rate before each Dense of the head (0 disables).
        freeze_until: freeze backbone layers with reference index ``< freeze_until``
            (keras.applications numbering, index 0 = input: ResNet50 ``143`` =
            ``conv5_block1_1_conv``, ``144`` = ``conv5_block1_1_bn``), or a layer
            name: freeze every layer before it (that layer is the first trainable
            one). Frozen BatchNorm layers run in inference mode. ``0`` trains
            everything; ``-1`` freezes the whole backbone.
        weights: where the starting weights come from, any form of
            :data:`cxr_tf.models.weights.WEIGHTS_FORMS` (``None``, ``"imagenet"``, a file,
            ``"preset:NAME"``, ``"run:DIR"``, ``"ssl:DIR"``, a checked URL). Files, runs and SSL
            encoders give the backbone; a preset gives the backbone, and the head too when
            head, classes and multi-label setting match (``weights_loaded`` says which).
        multilabel: sigmoid outputs instead of softmax.
        class_names: stored with the model (reports, export).
        bn_momentum: override the momentum of every BatchNormalization layer
            (keras.applications uses 0.99; training from scratch on a few hundred
            steps needs ~0.9, PyTorch's default, or the moving statistics used at
            evaluation still mostly hold their initial values).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 3,
        image_size: int = 224,
        head: str = "fc256-128",
        dropout: float = 0.0,
        freeze_until: int | str = 144,
        weights: str | None = None,
        multilabel: bool = False,
        class_names: list[str] | None = None,
        bn_momentum: float | None = None,
        **kwargs,
    ):
        spec = get_backbone(backbone)
        hidden = parse_head(head)
        if num_classes < 1:
            raise CXRConfigError(f"num_classes must be >= 1; received num_classes={num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise CXRConfigError(f"{len(class_names)} class_names for num_classes={num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise CXRConfigError(f"dropout must be in [0, 1); received dropout={dropout}")

        from cxr_tf.models.weights import resolve_weights

        # Resolved before building: an unknown preset or a missing file fails fast, by name.
        source = resolve_weights(weights)
        if source.kind == "preset" and source.preset.backbone != backbone:
            from cxr_tf.errors import CXRArchitectureError

            raise CXRArchitectureError(
                f"preset {source.preset.name!r} ({source.path}) holds a {source.preset.backbone!r} backbone; "
                f"this model is {backbone!r}. Use backbone={source.preset.backbone!r} or another preset.")

        # === Functional graph ===
        inputs = keras.Input((image_size, image_size, 1), name="image")
        x = BackboneInput(spec.input_mode, spec.channels, name="backbone_input")(inputs)
        features, backbone_layers = spec.build(x, source.builder_arg())
        x = keras.layers.GlobalAveragePooling2D(name="head_gap")(features)
        for i, units in enumerate(hidden, start=1):
            if dropout:
                x = keras.layers.Dropout(dropout, name=f"head_dropout{i}")(x)
            x = keras.layers.Dense(units, activation="relu", name=f"head_fc{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name="head_dropout_out")(x)
        # float32 under a mixed policy too (cxr_tf.training.precision): float16 softmax /
        # sigmoid saturate and round probabilities to 2^-11, and the loss reads them.
        outputs = keras.layers.Dense(
            num_classes, activation="sigmoid" if multilabel else "softmax", name="predictions", dtype="float32"
        )(x)
        super().__init__(inputs=inputs, outputs=outputs, **{"name": f"cxr_{backbone}", **kwargs})

        # === Config ===
        self.backbone = backbone
        self.num_classes = num_classes
        self.image_size = image_size
        self.head = head
        self.dropout = dropout
        self.freeze_until = freeze_until
        self.weights_source = weights
        self.multilabel = multilabel
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.backbone_layer_names = [l.name for l in backbone_layers]
        self.cam_layer = spec.cam_layer
        self.bn_momentum = bn_momentum
        if bn_momentum is not None:
            if not 0.0 <= bn_momentum < 1.0:
                raise CXRConfigError(f"bn_momentum must be in [0, 1); received bn_momentum={bn_momentum}")
            for layer in self.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = bn_momentum
        self.set_freeze(freeze_until)
        # Run and preset weights are copied by layer name once the graph exists.
        self.weights_loaded = source.load_into(self)

    # ------------------------------------------------------------- freezing
    def backbone_layer(self, index: int) -> keras.layers.Layer:
        """Backbone layer by reference index (1-based; 0 is the input layer)."""
        if not 1 <= index <= len(self.backbone_layer_names):
            raise CXRModelError(f"backbone index {index} outside 1..{len(self.backbone_layer_names)}")
        return self.get_layer(self.backbone_layer_names[index - 1])

    def freeze_index(self, freeze_until: int | str) -> int:
        """A reference index from an index, a digit string or a backbone layer name."""
        if isinstance(freeze_until, str):
            s = freeze_until.strip()
            if s.lstrip("-").isdigit():
                return int(s)
            if s not in self.backbone_layer_names:
                near = [n for n in self.backbone_layer_names if s.split("_")[0] in n][:5]
                raise CXRConfigError(f"freeze_until: {s!r} is not a layer of {self.backbone}"
                                     + (f" (similar: {', '.join(near)})" if near else ""))
            return self.backbone_layer_names.index(s) + 1
        return int(freeze_until)

    def set_freeze(self, freeze_until: int | str) -> None:
        """(Re)freeze: backbone layers with reference index < ``freeze_until`` are frozen
        (or every layer before the named one)."""
        freeze_until = self.freeze_index(freeze_until)
        n = len(self.backbone_layer_names)
        if freeze_until < -1 or freeze_until > n + 1:
            raise CXRConfigError(f"freeze_until must be in -1..{n + 1} for {self.backbone}; received {freeze_until}")
        limit = n + 1 if freeze_until == -1 else freeze_until
        for i, name in enumerate(self.backbone_layer_names, start=1):
            self.get_layer(name).trainable = i >= limit
        self.freeze_until = freeze_until

    def parameter_counts(self) -> dict[str, int]:
        """Trainable / non-trainable / total parameter counts (BN statistics are non-trainable)."""
        tr = int(sum(np.prod(w.shape) for w in self.trainable_weights))
        nt = int(sum(np.prod(w.shape) for w in self.non_trainable_weights))
        return {"trainable": tr, "non_trainable": nt, "total": tr + nt}

    # --------------------------------------------------------------- config
    def get_config(self):
        return {
            "backbone": self.backbone,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "head": self.head,
            "dropout": self.dropout,
            "freeze_until": self.freeze_until,
            # Architecture only: a saved model carries its weights, so its config must not
            # name the file they came from (a path relative to some other working directory).
            # The source stays readable as ``weights_source``.
            "weights": None,
            "multilabel": self.multilabel,
            "class_names": self.class_names,
            "bn_momentum": self.bn_momentum,
            "name": self.name,
        }

    @classmethod
    def from_preset(cls, preset, num_classes: int | None = None, class_names=None, **kwargs) -> "CXRClassifier":
        """A classifier from a preset (a name, ``preset:NAME``, a folder or a checked URL).

        With ``num_classes`` / ``class_names`` omitted or equal to the preset's (and no other
        head, size or multi-label setting), this is the preset's own trained classifier;
        otherwise a new head on the preset's trunk (``weights_loaded == "trunk"``).
        ``kwargs`` go to the constructor (``freeze_until``, ``dropout``, ``head``, ...).
        The preset is kept as ``model.preset`` (its metadata holds the thresholds).
        """
        from cxr_tf.models.presets import classifier_from_preset

        return classifier_from_preset(preset, num_classes, class_names, **kwargs)

    @classmethod
    def from_config(cls, config):
        # Weights come from the saved file, never from a download on load.
        return cls(**{**config, "weights": None})
