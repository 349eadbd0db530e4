"""Tools around an export: ``saved_model_cli`` (inspect, run), a summary, the TF Serving
models.config, the docker command and a serving README."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from cxr_tf.data.preprocess import CHANNELS
from cxr_tf.errors import CXRConfigError
from cxr_tf.export.savedmodel.layout import _NAME_RE
from cxr_tf.export.savedmodel.load import load_exported


# --------------------------------------------------------------------------- CLI / serving docs
def saved_model_cli_path() -> str:
    """The ``saved_model_cli`` executable next to this Python, else the one on PATH."""
    here = Path(sys.executable).parent / "saved_model_cli"
    if here.is_file():
        return str(here)
    found = shutil.which("saved_model_cli")
    if not found:
        raise CXRConfigError("saved_model_cli not found (it is installed with tensorflow)")
    return found


def _run_cli(args: list[str], timeout: float) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([saved_model_cli_path(), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"saved_model_cli {' '.join(args[:1])} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return proc.stdout


def inspect_with_cli(path: str | os.PathLike, timeout: float = 120) -> str:
    """Output of ``saved_model_cli show --dir PATH --all`` (signatures, dtypes, shapes).

    Args:
        path: the version directory.
        timeout: seconds before giving up.
    """
    return _run_cli(["show", "--dir", str(path), "--all"], timeout)


def describe_export(path: str | os.PathLike) -> str:
    """A readable summary of an export: classes, image size, operating point, signatures.

    ``cxr-tf inspect`` prints it (``--raw`` prints :func:`inspect_with_cli` instead).
    """
    m = load_exported(path)
    meta = m.metadata
    lines = [f"export:      {m.path}",
             f"model:       {meta.get('model_name', m.path.parent.name)} v{meta.get('version', m.path.name)}"
             + (f" ({meta['metadata']['experiment']})" if (meta.get("metadata") or {}).get("experiment") else ""),
             f"classes:     {', '.join(m.class_names)}" + ("  (multi-label)" if m.multilabel else ""),
             f"image size:  {m.image_size} x {m.image_size}, {meta.get('channels', CHANNELS)} channel(s)",
             f"threshold:   {m.threshold if m.threshold is not None else 'none'}",
             f"decision:    {meta.get('decision_rule') or 'argmax (older export: serves no decision output)'}"]
    if m.class_thresholds:
        lines.append("class thresholds: " + ", ".join(f"{c} {t:g}" for c, t in zip(m.class_names, m.class_thresholds)))
    lines.append("signatures:")
    for name, fn in sorted(m.signatures.items()):
        ins, outs = (", ".join(f"{k} {v.dtype.name} {_shape(v.shape)}" for k, v in sorted(specs.items()))
                     for specs in (fn.structured_input_signature[1], fn.structured_outputs))
        lines.append(f"  {name}: ({ins}) -> ({outs})")
    if meta.get("created_utc"):
        lines.append(f"created:     {meta['created_utc']} with cxr_tf {meta.get('cxr_tf_version', '?')}, "
                     f"TensorFlow {meta.get('tensorflow_version', '?')}")
    return "\n".join(lines)


def _shape(shape) -> str:
    return "[" + ", ".join("N" if i == 0 and d is None else ("?" if d is None else str(d))
                           for i, d in enumerate(shape.as_list())) + "]"


def bytes_literal(data: bytes) -> str:
    r"""``data`` as a Python bytes literal of ``\xNN`` escapes only.

    ``saved_model_cli run --input_exprs`` splits its argument on ';' and '=' before
    ``ast.literal_eval``; ``repr(bytes)`` may contain both, escapes never do.
    """
    return "b'" + "".join(f"\\x{c:02x}" for c in data) + "'"


def run_with_cli(path: str | os.PathLike, signature: str, *, input_exprs: str | None = None,
                 inputs: str | None = None, timeout: float = 120) -> str:
    """Output of ``saved_model_cli run`` on one signature (tag set ``serve``).

    Args:
        path: the version directory.
        signature: signature name.
        input_exprs: ``key=<python literal>`` (literal only: ``np.*`` calls are refused
            by TF >= 2.7's ``literal_eval``).
        inputs: ``key=file.npy`` (``.npy``/``.npz``/pickle).
        timeout: seconds before giving up.
    """
    args = ["run", "--dir", str(path), "--tag_set", "serve", "--signature_def", signature]
    if input_exprs:
        args += ["--input_exprs", input_exprs]
    if inputs:
        args += ["--inputs", inputs]
    return _run_cli(args, timeout)


def write_models_config(base_dir: str | os.PathLike, names: Sequence[str],
                        path: str | os.PathLike | None = None, container_base: str = "/models") -> Path:
    """Write a TF Serving ``models.config`` serving several models from one server.

    Args:
        base_dir: where the model folders are (used for the default ``path``).
        names: the model folder names.
        path: output file; default ``base_dir/models.config``.
        container_base: where ``base_dir`` is mounted inside the container.

    Returns:
        The path written.
    """
    if not names:
        raise CXRConfigError("names must list at least one model")
    entries = []
    for n in names:
        if not _NAME_RE.match(n):
            raise CXRConfigError(f"model name {n!r} must be letters, digits, '.', '_' or '-'")
        entries.append("  config {\n"
                       f"    name: '{n}'\n"
                       f"    base_path: '{container_base.rstrip('/')}/{n}'\n"
                       "    model_platform: 'tensorflow'\n"
                       "  }\n")
    text = "model_config_list {\n" + "".join(entries) + "}\n"
    path = Path(path) if path is not None else Path(base_dir) / "models.config"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def docker_command(base_dir: str | os.PathLike, name: str | None = None, *,
                   config_file: str | None = None, rest_port: int = 8501, grpc_port: int = 8500,
                   image: str = "tensorflow/serving") -> str:
    """The ``docker run`` line serving one model (``name``) or a ``models.config``.

    Args:
        base_dir: host folder holding the model folders.
        name: serve just this model (mounted at ``/models/<name>``).
        config_file: file name of a models.config inside ``base_dir`` (serves all listed).
        rest_port, grpc_port: host ports.
        image: the TF Serving image.
    """
    base = Path(base_dir).resolve()
    ports = f"-p {rest_port}:8501 -p {grpc_port}:8500"
    if config_file:
        return (f'docker run --rm {ports} -v "{base}:/models" {image} '
                f"--model_config_file=/models/{config_file}")
    if not name:
        raise CXRConfigError("give a model name or a config_file")
    return f'docker run --rm {ports} -v "{base / name}:/models/{name}" -e MODEL_NAME={name} {image}'


def serving_readme(base_dir: str | os.PathLike, name: str, *, multilabel: bool = False,
                   rest_port: int = 8501, grpc_port: int = 8500) -> str:
    """Markdown with the docker line and REST/gRPC request examples for one model.

    Args:
        base_dir: host folder holding the model folders.
        name: the model name.
        multilabel: whether the export's decision is per label (no ``class_index``).
        rest_port, grpc_port: host ports.
    """
    outputs = ("probabilities, decision (0/1 per label)" if multilabel else
               "probabilities, decision (class name by the exported threshold), class_index")
    return f"""# Serving `{name}` with TF Serving

```bash
{docker_command(base_dir, name, rest_port=rest_port, grpc_port=grpc_port)}
```

Outputs: {outputs}. Inputs: `image_bytes` (encoded PNG/JPEG, signature `serving_default`)
or `images` (float32 [N, H, W, C], signature `predict_images`).

## REST (base64: the input name ends in `_bytes`, so `{{"b64": ...}}` is decoded by the server)

```bash
curl -s -X POST http://localhost:{rest_port}/v1/models/{name}:predict \\
  -H 'Content-Type: application/json' \\
  -d '{{"signature_name": "serving_default", "instances": [{{"image_bytes": {{"b64": "'"$(base64 -w0 image.png)"'"}}}}]}}'
curl -s http://localhost:{rest_port}/v1/models/{name}/metadata   # signatures
```

## gRPC (`pip install tensorflow-serving-api grpcio`)

```python
import grpc, tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel("localhost:{grpc_port}"))
req = predict_pb2.PredictRequest()
req.model_spec.name = "{name}"
req.model_spec.signature_name = "serving_default"
req.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([open("image.png", "rb").read()]))
probs = tf.make_ndarray(stub.Predict(req, 10.0).outputs["probabilities"])
```
"""
