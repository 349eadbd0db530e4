"""TF Serving export: SavedModels with in-graph preprocessing, warm-up and metadata."""
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
from cxr_tf.export.serving_protos import read_warmup_file, serving_messages

__all__ = [
    "ExportResult",
    "ExportedModel",
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
