"""Export a cxr_tf classifier as a TF Serving SavedModel, and load it back.

Layout written: ``base_dir/<name>/<version>/`` with ``saved_model.pb``,
``variables/`` and ``assets.extra/`` (``cxr_tf_metadata.json`` and
``tf_serving_warmup_requests``), which is what ``tensorflow_model_server`` polls.

Why ``tf.saved_model.save`` on a ``tf.Module`` rather than Keras' ``model.export``:
Keras 3's exporter (and ``keras.export.ExportArchive``) stores every variable twice,
doubling the artefact; a module that merely holds the Keras model stores each once
(FACTS.md, Export).

Preprocessing runs inside the graph through :func:`cxr_tf.data.preprocess.prepare_image`
and :func:`~cxr_tf.data.preprocess.prepare_float_batch`, the same functions used in
training and evaluation, so a served prediction equals the offline one.

The served ``decision`` / ``class_index`` apply the exported operating point, the same
rule as the run's report and ``cxr-tf evaluate`` (:func:`decision_rule`): a TF Serving
client gets the decision the metrics describe, with the raw ``probabilities`` alongside.
The metadata also stores the Keras config of the model (``keras_model``), so
:meth:`ExportedModel.keras_model` rebuilds the Keras model on the exported variables
(for CAMs) from any working directory, with no file outside the export.

The modules, by role: :mod:`~cxr_tf.export.savedmodel.write` (export_for_serving),
:mod:`~cxr_tf.export.savedmodel.load` (ExportedModel, load_exported),
:mod:`~cxr_tf.export.savedmodel.tools` (saved_model_cli, summaries, TF Serving config and
docs), and :mod:`~cxr_tf.export.savedmodel.layout`, the format both sides share (file and
signature names, the decision rule).
"""
from cxr_tf.export.savedmodel.layout import (BYTES_INPUT, IMAGES_INPUT, IMAGES_SIGNATURE, MAX_SIZE_RATIO,  # noqa: I001
                                            METADATA_FILE, SERVING_SIGNATURE, WARMUP_FILE, decision_rule,
                                            float32_policy)
from cxr_tf.export.savedmodel.load import ExportedModel, load_exported
from cxr_tf.export.savedmodel.tools import (
    bytes_literal,
    describe_export,
    docker_command,
    inspect_with_cli,
    run_with_cli,
    saved_model_cli_path,
    serving_readme,
    write_models_config,
)
from cxr_tf.export.savedmodel.write import ExportResult, export_for_serving, float32_model
