"""Training step throughput: ResNet50 with ``freeze_until=144`` vs full fine-tuning.

:class:`cxr_tf.models.CXRClassifier` (ResNet50, seed-004 head ``fc256-128``, Adam,
compiled as experiments compile it) trained with ``train_on_batch`` on a fixed
in-memory batch, so only the model's step is timed. ``freeze_until=144`` trains
conv5 + head (14,976,515 + head parameters; frozen BatchNorm in inference mode);
``freeze_until=0`` trains everything. Images/s at 128 and 224 px.

Target: the frozen trunk at least 1.5x faster than full fine-tuning.

Run: ``python -m benchmarks.train_step [--tiny]``.
"""
from __future__ import annotations

from benchmarks._common import Row, build_classifier, main, train_images_per_s

NAME = "train_step"


def run(args) -> list[Row]:
    import gc

    import keras

    if args.tiny:
        backbone, sizes, batch, steps, repeats, frozen = "tiny_cnn", (32,), 4, 1, 1, 5
    else:
        backbone, sizes, batch, steps, repeats, frozen = "resnet50", tuple(args.sizes), args.batch, args.steps, \
            args.repeats, 144
    rows: list[Row] = []
    for size in sizes:
        rates = {}
        for freeze in (frozen, 0):
            keras.backend.clear_session()
            gc.collect()
            model = build_classifier(backbone, size, freeze_until=freeze)
            counts = model.parameter_counts()
            rate, t = train_images_per_s(model, batch, size, steps=steps, repeats=repeats)
            rates[freeze] = rate
            label = "full fine-tuning" if freeze == 0 else "frozen trunk"
            rows.append(Row(f"{backbone} {size}px {label} (freeze_until={freeze})", "images_per_s", rate, "img/s",
                            repeats=t.repeats, params={"image_size": size, "batch": batch, "steps_per_repeat": steps,
                                                       "trainable_params": counts["trainable"]}))
            print(f"  {size}px freeze_until={freeze}: {rate:.2f} img/s ({counts['trainable']:,} trainable)", flush=True)
            del model
        rows.append(Row(f"{backbone} {size}px frozen / full", "ratio", rates[frozen] / rates[0], "x", target=">=1.5",
                        params={"image_size": size, "batch": batch}))
    return rows


def _options(p):
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    p.add_argument("--batch", type=int, default=16, help="batch size (FACTS: 16 used for ResNet50 CPU figures)")
    p.add_argument("--steps", type=int, default=1, help="optimizer steps per timed repetition")
    p.add_argument("--repeats", type=int, default=3)


if __name__ == "__main__":
    main(NAME, run, __doc__, configure=_options)
