"""CNN-based distortions (SPEC S2): a denoising autoencoder and a distorting GAN.

BAPPS (Zhang et al. 2018, Sec. 2.1) makes its "CNN-based" distortions by running
images through many small autoencoder-like generators that differ in depth, skip
connections, dropout, upsampling, normalisation and loss. Here:

* :func:`build_denoising_autoencoder` + :func:`train_denoising_autoencoder`: trained
  on CXRs to remove Gaussian noise; as a distortion it denoises ``image + noise``
  (severity = noise level), leaving the smoothing/hallucination a DAE makes.
* :func:`build_generator` / :func:`build_discriminator` + :class:`DistortionGAN`:
  a pix2pix-style conditional GAN whose generator maps an original image to a
  distorted one and whose discriminator judges (original, distorted) pairs: real
  pairs are (x, traditional distortion of x), fake pairs (x, G(x)). The generator's
  knobs (layers, skips, dropout, upsampling, normalisation) and the loss are config
  (:class:`GeneratorConfig`, :class:`GANConfig`); each configuration gives a
  different distortion. As a distortion, severity ``s`` blends ``x + s (G(x) - x)``.

All models are flat Keras functional models with stable layer names; tiny sizes
train in seconds on a CPU (used by the tests).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from cxr_tf.distortions.traditional import Distortion, check_image
from cxr_tf.errors import CXRConfigError

UPSAMPLING = ("transpose", "nearest", "bilinear")
NORMS = ("batch", "instance", "none")
LOSSES = ("bce", "lsgan")


@dataclasses.dataclass
class GeneratorConfig:
    """Knobs of the distorting generator (an encoder-decoder, U-Net when ``skips``).

    Attributes:
        image_size: input side (a multiple of ``2**layers``).
        layers: number of stride-2 encoder stages (= decoder stages).
        base_filters: filters of the first stage, doubled per stage (capped at 8x).
        skips: U-Net skip connections (encoder stage i concatenated into decoder stage i).
        dropout: dropout rate in the decoder stages (pix2pix puts it there).
        upsampling: ``transpose`` (Conv2DTranspose: prone to checkerboard artifacts),
            ``nearest`` or ``bilinear`` (UpSampling2D followed by a 3x3 conv).
        norm: ``batch``, ``instance`` (GroupNormalization with one group per channel)
            or ``none``.
    """

    image_size: int = 64
    layers: int = 3
    base_filters: int = 16
    skips: bool = True
    dropout: float = 0.0
    upsampling: str = "transpose"
    norm: str = "batch"

    def __post_init__(self):
        if self.upsampling not in UPSAMPLING:
            raise CXRConfigError(f"upsampling must be one of {UPSAMPLING}; received {self.upsampling!r}")
        if self.norm not in NORMS:
            raise CXRConfigError(f"norm must be one of {NORMS}; received {self.norm!r}")
        if self.layers < 1 or self.image_size % (2**self.layers):
            raise CXRConfigError(f"image_size {self.image_size} must be a multiple of 2**layers={2**self.layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise CXRConfigError(f"dropout must be in [0, 1); received {self.dropout}")


@dataclasses.dataclass
class GANConfig:
    """The GAN around a generator: discriminator size, losses, optimiser.

    Attributes:
        generator: the generator's knobs.
        disc_layers / disc_filters: stride-2 conv stages of the PatchGAN discriminator.
        loss: adversarial loss, ``bce`` (original GAN / pix2pix) or ``lsgan`` (least squares).
        l1_weight: weight of the L1 term ``|G(x) - y|`` (0 = adversarial only).
        lr: Adam learning rate (beta_1 0.5, as pix2pix).
    """

    generator: GeneratorConfig = dataclasses.field(default_factory=GeneratorConfig)
    disc_layers: int = 2
    disc_filters: int = 16
    loss: str = "bce"
    l1_weight: float = 10.0
    lr: float = 2e-4

    def __post_init__(self):
        if isinstance(self.generator, dict):
            self.generator = GeneratorConfig(**self.generator)
        if self.loss not in LOSSES:
            raise CXRConfigError(f"loss must be one of {LOSSES}; received {self.loss!r}")


def _norm(x, kind, name):
    import keras

    if kind == "batch":
        return keras.layers.BatchNormalization(name=name)(x)
    if kind == "instance":
        return keras.layers.GroupNormalization(groups=-1, name=name)(x)
    return x


def build_generator(cfg: GeneratorConfig | None = None, name: str = "distortion_generator"):
    """The generator: ``(S, S, 1)`` image in [0, 1] -> distorted image in [0, 1]."""
    import keras

    cfg = cfg or GeneratorConfig()
    inp = keras.Input((cfg.image_size, cfg.image_size, 1), name="image")
    x = inp
    skips = []
    for i in range(1, cfg.layers + 1):
        f = cfg.base_filters * min(2 ** (i - 1), 8)
        x = keras.layers.Conv2D(f, 4, strides=2, padding="same", name=f"enc{i}_conv")(x)
        x = _norm(x, cfg.norm if i > 1 else "none", f"enc{i}_norm")
        x = keras.layers.LeakyReLU(0.2, name=f"enc{i}_act")(x)
        skips.append(x)
    for j, i in enumerate(range(cfg.layers, 0, -1)):
        f = cfg.base_filters * min(2 ** (i - 2), 8) if i > 1 else cfg.base_filters
        if j > 0 and cfg.skips:
            x = keras.layers.Concatenate(name=f"dec{i}_skip")([x, skips[i - 1]])
        if cfg.upsampling == "transpose":
            x = keras.layers.Conv2DTranspose(f, 4, strides=2, padding="same", name=f"dec{i}_up")(x)
        else:
            x = keras.layers.UpSampling2D(2, interpolation=cfg.upsampling, name=f"dec{i}_up")(x)
            x = keras.layers.Conv2D(f, 3, padding="same", name=f"dec{i}_conv")(x)
        x = _norm(x, cfg.norm, f"dec{i}_norm")
        if cfg.dropout:
            x = keras.layers.Dropout(cfg.dropout, name=f"dec{i}_dropout")(x)
        x = keras.layers.Activation("relu", name=f"dec{i}_act")(x)
    if cfg.skips:
        x = keras.layers.Concatenate(name="out_skip")([x, inp])
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="output")(x)
    return keras.Model(inp, out, name=name)


def build_discriminator(image_size: int = 64, layers: int = 2, filters: int = 16, name: str = "pair_discriminator"):
    """PatchGAN discriminator on a pair: inputs ``original`` and ``candidate`` -> patch logits."""
    import keras

    a = keras.Input((image_size, image_size, 1), name="original")
    b = keras.Input((image_size, image_size, 1), name="candidate")
    x = keras.layers.Concatenate(name="pair")([a, b])
    for i in range(1, layers + 1):
        x = keras.layers.Conv2D(filters * min(2 ** (i - 1), 8), 4, strides=2, padding="same", name=f"d{i}_conv")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"d{i}_act")(x)
    out = keras.layers.Conv2D(1, 3, padding="same", name="patch_logits")(x)
    return keras.Model([a, b], out, name=name)


class DistortionGAN:
    """pix2pix-style training of a distorting generator against a pair discriminator.

    ``train_step(x, y)``: ``x`` originals, ``y`` their real distortions, both
    ``(N, S, S, 1)`` in [0, 1]. The discriminator learns D(x, y) -> real,
    D(x, G(x)) -> fake; the generator learns to fool it plus ``l1_weight * |G(x) - y|``.
    """

    def __init__(self, cfg: GANConfig | None = None):
        import keras

        self.cfg = cfg or GANConfig()
        g = self.cfg.generator
        self.generator = build_generator(g)
        self.discriminator = build_discriminator(g.image_size, self.cfg.disc_layers, self.cfg.disc_filters)
        self.g_opt = keras.optimizers.Adam(self.cfg.lr, beta_1=0.5)
        self.d_opt = keras.optimizers.Adam(self.cfg.lr, beta_1=0.5)
        self._step = None

    def _adv(self, logits, real: bool):
        import tensorflow as tf

        target = tf.ones_like(logits) if real else tf.zeros_like(logits)
        if self.cfg.loss == "lsgan":
            return tf.reduce_mean(tf.square(logits - target))
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits))

    def _make_step(self):
        import tensorflow as tf

        G, D = self.generator, self.discriminator

        @tf.function
        def step(x, y):
            with tf.GradientTape() as gt, tf.GradientTape() as dt:
                fake = G(x, training=True)
                d_real = D([x, y], training=True)
                d_fake = D([x, fake], training=True)
                d_loss = 0.5 * (self._adv(d_real, True) + self._adv(d_fake, False))
                l1 = tf.reduce_mean(tf.abs(fake - y))
                g_loss = self._adv(d_fake, True) + self.cfg.l1_weight * l1
            self.g_opt.apply_gradients(zip(gt.gradient(g_loss, G.trainable_variables), G.trainable_variables))
            self.d_opt.apply_gradients(zip(dt.gradient(d_loss, D.trainable_variables), D.trainable_variables))
            return {"d_loss": d_loss, "g_loss": g_loss, "l1": l1}

        return step

    def train_step(self, x, y) -> dict[str, float]:
        if self._step is None:
            self._step = self._make_step()
        out = self._step(np.asarray(x, np.float32), np.asarray(y, np.float32))
        return {k: float(v) for k, v in out.items()}

    def fit(self, originals, targets_fn, steps: int, batch_size: int = 16, seed: int = 0) -> list[dict]:
        """Train for ``steps`` batches. ``targets_fn(batch, rng) -> real distortions``."""
        rng = np.random.default_rng(seed)
        x_all = np.asarray(originals, np.float32)
        hist = []
        for _ in range(steps):
            idx = rng.integers(0, len(x_all), batch_size)
            x = x_all[idx]
            hist.append(self.train_step(x, targets_fn(x, rng)))
        return hist


def build_denoising_autoencoder(image_size: int = 64, filters=(16, 32), name: str = "denoising_autoencoder"):
    """Conv encoder (stride-2) / decoder (nearest upsampling + conv), sigmoid output."""
    import keras

    inp = keras.Input((image_size, image_size, 1), name="noisy")
    x = inp
    for i, f in enumerate(filters, start=1):
        x = keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="relu", name=f"enc{i}_conv")(x)
    for i, f in reversed(list(enumerate(filters, start=1))):
        x = keras.layers.UpSampling2D(2, name=f"dec{i}_up")(x)
        x = keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"dec{i}_conv")(x)
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="denoised")(x)
    return keras.Model(inp, out, name=name)


def train_denoising_autoencoder(model, images, noise_sigma: float = 0.1, epochs: int = 5, batch_size: int = 16,
                                seed: int = 0, lr: float = 2e-3):
    """Fit ``model`` to map ``images + N(0, noise_sigma)`` back to ``images`` (MSE).

    The noise is drawn fresh per epoch in NumPy from ``seed`` (reproducible)."""
    import keras

    x = np.asarray(images, np.float32)[..., None] if np.ndim(images) == 3 else np.asarray(images, np.float32)
    rng = np.random.default_rng(seed)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    hist = []
    for _ in range(epochs):
        noisy = np.clip(x + rng.normal(0, noise_sigma, x.shape), 0, 1).astype(np.float32)
        h = model.fit(noisy, x, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        hist.append(float(h.history["loss"][0]))
    return hist


def _run(model, img):
    s = model.input_shape[1]
    if img.shape != (s, s):
        raise CXRConfigError(f"model {model.name} takes {s}x{s} images; received {img.shape}")
    return np.asarray(model(img[None, :, :, None], training=False))[0, :, :, 0]


def dae_distortion(model, name: str = "dae", max_noise: float = 0.3) -> Distortion:
    """A trained DAE as a distortion: severity ``s`` -> denoise ``image + N(0, max_noise*s)``
    (``s = 0`` returns the image unchanged)."""

    def fn(img, s, rng):
        if s == 0:
            return img.copy(), {"noise_sigma": 0.0, "model": model.name}
        sigma = max_noise * s
        noisy = np.clip(img + rng.normal(0, sigma, img.shape), 0, 1).astype(np.float32)
        return _run(model, noisy), {"noise_sigma": sigma, "model": model.name}

    return Distortion(name, "cnn", fn)


def generator_distortion(generator, name: str = "gan", config: dict | None = None) -> Distortion:
    """A trained generator as a distortion: ``x + s (G(x) - x)`` (``s = 1``: G(x))."""

    def fn(img, s, rng):
        g = _run(generator, check_image(img))
        return img + s * (g - img), {"blend": s, "model": generator.name, **({"config": config} if config else {})}

    return Distortion(name, "cnn", fn)
