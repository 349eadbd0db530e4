"""Exports: TF Serving SavedModels (in-graph preprocessing, warm-up, metadata) and, through
:func:`export_model`, ONNX and TFLite files verified with their own runtimes."""
from cxr_tf.export.savedmodel import (
    ExportedModel,
    ExportResult,
    decision_rule,
    describe_export,
    docker_command,
    export_for_serving,
    inspect_with_cli,
    load_exported,
    run_with_cli,
    saved_model_cli_path,
    serving_readme,
    write_models_config,
)
from cxr_tf.export.portable import ModelSource, PortableExport, export_model, load_runner, register_source_resolver
from cxr_tf.export.preprocess_np import preprocess_images
from cxr_tf.export.serving_protos import read_warmup_file, serving_messages

__all__ = [
    "ExportResult",
    "ExportedModel",
    "ModelSource",
    "PortableExport",
    "export_model",
    "load_runner",
    "preprocess_images",
    "register_source_resolver",
    "decision_rule",
    "describe_export",
    "docker_command",
    "export_for_serving",
    "inspect_with_cli",
    "load_exported",
    "read_warmup_file",
    "run_with_cli",
    "saved_model_cli_path",
    "serving_messages",
    "serving_readme",
    "write_models_config",
]
